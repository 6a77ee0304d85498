//! Least privilege: who may connect to the vhost-user socket, and serving
//! as an unprivileged user once the device and sockets are open.

use std::path::Path;

use extstorage_serve_api::SocketAccess;
use nix::unistd::{Gid, Group, Uid, User, chown, setgid, setgroups, setuid};

use crate::Error;

/// A user by name or number.
fn user(name: &str) -> Result<User, String> {
    let found = match name.parse::<u32>() {
        Ok(uid) => User::from_uid(Uid::from_raw(uid)),
        Err(_) => User::from_name(name),
    };
    match found {
        Ok(Some(u)) => Ok(u),
        Ok(None) => Err(format!("no user {name:?} on this host")),
        Err(e) => Err(format!("cannot look up user {name:?}: {e}")),
    }
}

/// A group id by name or number.
fn group(name: &str) -> Result<Gid, String> {
    if let Ok(gid) = name.parse::<u32>() {
        return Ok(Gid::from_raw(gid));
    }
    match Group::from_name(name) {
        Ok(Some(g)) => Ok(g.gid),
        Ok(None) => Err(format!("no group {name:?} on this host")),
        Err(e) => Err(format!("cannot look up group {name:?}: {e}")),
    }
}

/// Gives the socket at `path` the owner, group and mode in `access`.
pub fn apply_socket_access(path: &Path, access: &SocketAccess) -> Result<(), Error> {
    use std::os::unix::fs::PermissionsExt;
    let fail = |what: String, reason: String| Error::SocketAccess {
        path: path.to_path_buf(),
        what,
        reason,
    };
    let uid = match &access.owner {
        Some(name) => Some(
            user(name)
                .map_err(|r| fail(format!("owner {name}"), r))?
                .uid,
        ),
        None => None,
    };
    let gid = match &access.group {
        Some(name) => Some(group(name).map_err(|r| fail(format!("group {name}"), r))?),
        None => None,
    };
    if uid.is_some() || gid.is_some() {
        chown(path, uid, gid).map_err(|e| fail("its owner and group".into(), e.to_string()))?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(access.mode))
        .map_err(|e| fail(format!("mode {:04o}", access.mode), e.to_string()))?;
    tracing::debug!(socket = %path.display(), owner = ?access.owner, group = ?access.group, mode = format!("{:04o}", access.mode), "socket access set");
    Ok(())
}

/// Switches the whole process (every thread) to `name`'s uid, primary gid
/// and no supplementary groups, for good: a later attempt to regain root
/// is checked to fail.
pub fn drop_privileges(name: &str) -> Result<(), Error> {
    let fail = |reason: String| Error::DropPrivileges {
        user: name.to_owned(),
        reason,
    };
    let u = user(name).map_err(fail)?;
    setgroups(&[u.gid]).map_err(|e| fail(format!("setgroups: {e}")))?;
    setgid(u.gid).map_err(|e| fail(format!("setgid: {e}")))?;
    setuid(u.uid).map_err(|e| fail(format!("setuid: {e}")))?;
    if !u.uid.is_root() && setuid(Uid::from_raw(0)).is_ok() {
        return Err(fail("root could be regained after setuid".into()));
    }
    tracing::info!(
        user = name,
        uid = u.uid.as_raw(),
        gid = u.gid.as_raw(),
        "serving without root"
    );
    Ok(())
}
