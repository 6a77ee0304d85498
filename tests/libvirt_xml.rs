//! The libvirt `<disk type='vhostuser'>` element rendered by
//! `extstorage_uri::libvirt`, checked by libvirt's own schema
//! (`virt-xml-validate`, Debian's libvirt-clients) inside a minimal domain.

mod common_cli;

use std::path::Path;
use std::process::Command;

use extstorage_uri::libvirt::{SHARED_MEMORY_BACKING, vhost_user_disk_xml};

/// Indents every line of `text` by `n` spaces.
fn indent(text: &str, n: usize) -> String {
    text.lines()
        .map(|l| format!("{}{l}\n", " ".repeat(n)))
        .collect()
}

/// A minimal KVM domain holding `disk` under `<devices>`.
fn domain(disk: &str) -> String {
    format!(
        "<domain type='kvm'>\n  <name>vm1</name>\n  <memory unit='MiB'>512</memory>\n{}  \
         <vcpu>2</vcpu>\n  <os>\n    <type arch='x86_64' machine='q35'>hvm</type>\n  </os>\n  \
         <devices>\n{}  </devices>\n</domain>\n",
        indent(SHARED_MEMORY_BACKING, 2),
        indent(disk, 4)
    )
}

/// Runs `virt-xml-validate FILE domain`; Ok or the validator's output.
fn validate(doc: &str) -> Result<(), String> {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("domain.xml");
    std::fs::write(&file, doc).unwrap();
    let out = Command::new("virt-xml-validate")
        .arg(&file)
        .arg("domain")
        .output()
        .expect("virt-xml-validate (libvirt-clients) is installed by scripts/install-deps.sh");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() && said.contains(" validates") {
        Ok(())
    } else {
        Err(format!("{said}\n{doc}"))
    }
}

#[test]
fn the_vhostuser_disk_validates_inside_a_domain() {
    for (socket, queues, queue_size, reconnect, target) in [
        (
            "/run/extstorage/vhost-user/loopfile.vol1.sock",
            4,
            Some(256),
            Some(1000),
            "vdb",
        ),
        ("/run/vol.sock", 1, None, None, "vda"),
        // Markup in the path stays inside the attribute.
        (
            "/run/it's \"a\" <b> & c\td.sock",
            2,
            Some(1024),
            Some(1),
            "vdaa",
        ),
    ] {
        let disk =
            vhost_user_disk_xml(Path::new(socket), queues, queue_size, reconnect, target).unwrap();
        validate(&domain(&disk)).unwrap_or_else(|e| panic!("{socket:?}: {e}"));
    }
}

#[test]
fn the_validator_rejects_what_libvirt_would() {
    // The check is real: a disk libvirt's schema refuses fails here.
    let disk = vhost_user_disk_xml(Path::new("/run/v.sock"), 2, None, None, "vdb").unwrap();
    let broken = disk.replace("type='unix'", "type='tcp'");
    let relative = disk.replace("path='/run/v.sock'", "path='run/v.sock'");
    for doc in [domain(&broken), domain(&relative)] {
        let err = validate(&doc).expect_err("refused");
        assert!(err.contains("fails to validate"), "{err}");
    }
}

#[test]
fn kvm_args_prints_the_served_disk_for_libvirt() {
    let w = common_cli::World::new();
    w.install("loopfile");
    let dir = format!("dir={}", w.vols().display());
    let vol = [
        "--provider",
        "loopfile",
        "--volume",
        "vm1.disk0",
        "-p",
        &dir,
    ];
    let mut create = vec!["create"];
    create.extend(vol);
    create.extend(["--size", "16M"]);
    w.run(&create).ok();
    let mut serve = vol.to_vec();
    serve.extend(["--num-queues", "3"]);
    let served = w.serve(&serve).unwrap_or_else(|r| panic!("{r:#?}"));
    let mut kvm = vec!["kvm-args"];
    kvm.extend(vol);
    kvm.extend([
        "--access",
        "vhost-user",
        "--format",
        "libvirt-xml",
        "--target-dev",
        "vdb",
    ]);
    let run = w.run(&kvm).ok();
    let socket = served.ready["socket"].as_str().unwrap();
    assert!(run.stdout.contains("queues='3'"), "{run:#?}");
    assert!(run.stdout.contains(&format!("path='{socket}'")), "{run:#?}");
    assert!(run.stderr.contains("shared memory"), "{run:#?}");
    validate(&domain(&run.stdout)).unwrap();
    // Only vhost-user disks have a libvirt form here; nothing runs.
    let mut bad = vec!["kvm-args"];
    bad.extend(vol);
    bad.extend(["--format", "libvirt-xml"]);
    let r = w.run(&bad).code(2);
    assert!(r.stderr.contains("--access vhost-user"), "{r:#?}");
}
