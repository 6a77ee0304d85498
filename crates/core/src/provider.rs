//! Provider discovery, validation and diagnosis.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use nix::unistd::{AccessFlags, access};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::names::validate_provider_name;

/// Scripts every provider must ship.
pub const REQUIRED_SCRIPTS: [&str; 7] = [
    "create", "attach", "detach", "remove", "grow", "setinfo", "verify",
];
/// Scripts a provider may ship; when present they must be valid too.
pub const OPTIONAL_SCRIPTS: [&str; 3] = ["snapshot", "open", "close"];
/// The parameter list every provider must ship.
pub const PARAMETERS_FILE: &str = "parameters.list";
/// Ganeti's default search path.
pub const DEFAULT_SEARCH_PATH: &str = "/srv/ganeti/extstorage";

/// One line of `parameters.list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Parameter {
    /// The parameter name, as given with `-p name=value`.
    pub name: String,
    /// The free-text description (may be empty).
    pub description: String,
}

/// A validated provider.
#[derive(Debug, Clone, Serialize)]
pub struct Provider {
    /// The provider name (its directory name).
    pub name: String,
    /// The provider directory.
    pub path: PathBuf,
    /// The parameters from `parameters.list`.
    pub parameters: Vec<Parameter>,
    /// The optional scripts that are present.
    pub optional: BTreeSet<String>,
}

impl Provider {
    /// Loads and validates the provider in `path`, named `name`.
    pub fn load(name: &str, path: &Path) -> Result<Provider> {
        validate_provider_name(name)?;
        let invalid = |reason: String| Error::InvalidProvider {
            provider: name.to_owned(),
            path: path.to_owned(),
            reason,
        };
        for script in REQUIRED_SCRIPTS {
            check_file(path, script, true).map_err(invalid)?;
        }
        let mut optional = BTreeSet::new();
        for script in OPTIONAL_SCRIPTS {
            // As Ganeti: an optional script that cannot be stat()ed (absent,
            // or a dangling symlink) is absent; one that exists must be valid.
            match fs::metadata(path.join(script)) {
                Ok(_) => {
                    check_file(path, script, true).map_err(invalid)?;
                    optional.insert(script.to_owned());
                }
                Err(e) => {
                    tracing::debug!(provider = name, script, error = %e, "optional script absent");
                }
            }
        }
        check_file(path, PARAMETERS_FILE, false).map_err(invalid)?;
        let list_path = path.join(PARAMETERS_FILE);
        let text = fs::read(&list_path).map_err(|e| {
            invalid(format!(
                "File '{PARAMETERS_FILE}' under path '{}' cannot be read ({e})",
                path.display()
            ))
        })?;
        let parameters = parse_parameters(&String::from_utf8_lossy(&text)).map_err(invalid)?;
        Ok(Provider {
            name: name.to_owned(),
            path: path.to_owned(),
            parameters,
            optional,
        })
    }

    /// The script file for `action`.
    pub fn script(&self, action: &str) -> PathBuf {
        self.path.join(action)
    }

    /// Whether the optional script `action` is present.
    pub fn has_optional(&self, action: &str) -> bool {
        self.optional.contains(action)
    }

    /// The known parameter names, joined with ", ".
    pub fn known_parameters(&self) -> String {
        self.parameters
            .iter()
            .map(|p| p.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Checks one provider file with Ganeti's rules and error texts.
fn check_file(dir: &Path, file: &str, executable: bool) -> std::result::Result<(), String> {
    let full = dir.join(file);
    let meta = fs::metadata(&full).map_err(|e| {
        format!(
            "File '{file}' under path '{}' is missing ({e})",
            dir.display()
        )
    })?;
    if !meta.is_file() {
        return Err(format!(
            "File '{file}' under path '{}' is not a regular file",
            dir.display()
        ));
    }
    if executable && access(&full, AccessFlags::X_OK).is_err() {
        return Err(format!(
            "File '{file}' under path '{}' is not executable",
            dir.display()
        ));
    }
    Ok(())
}

/// Parses `parameters.list`: one parameter per line, name then description,
/// separated by spaces and/or tabs. Blank lines and lines starting with `#`
/// are skipped.
pub fn parse_parameters(text: &str) -> std::result::Result<Vec<Parameter>, String> {
    let mut out: Vec<Parameter> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name, description) = match line.split_once([' ', '\t']) {
            Some((name, rest)) => (name, rest.trim()),
            None => (line, ""),
        };
        if name.contains('=') {
            return Err(format!(
                "{PARAMETERS_FILE} line {}: parameter name {name:?} contains '='",
                n + 1
            ));
        }
        if out.iter().any(|p| p.name == name) {
            return Err(format!(
                "{PARAMETERS_FILE} line {}: parameter {name:?} is listed twice",
                n + 1
            ));
        }
        out.push(Parameter {
            name: name.to_owned(),
            description: description.to_owned(),
        });
    }
    Ok(out)
}

/// An ordered list of directories holding providers.
#[derive(Debug, Clone)]
pub struct SearchPath {
    dirs: Vec<PathBuf>,
}

/// The diagnosis of one provider directory.
#[derive(Debug, Clone, Serialize)]
pub struct Diagnosis {
    /// The directory name.
    pub name: String,
    /// The provider directory.
    pub path: PathBuf,
    /// Whether the provider is usable.
    pub valid: bool,
    /// Why it is not usable.
    pub reason: Option<String>,
    /// Another provider of the same name earlier in the search path, which
    /// is the one used.
    pub shadowed_by: Option<PathBuf>,
    /// The parameters (when valid).
    pub parameters: Vec<Parameter>,
    /// The optional scripts present (when valid).
    pub optional: Vec<String>,
}

impl SearchPath {
    /// A search path over `dirs`, searched in order. Relative directories
    /// are made absolute (scripts run with the provider directory as cwd).
    pub fn new(dirs: Vec<PathBuf>) -> SearchPath {
        let dirs = dirs
            .into_iter()
            .map(|d| std::path::absolute(&d).unwrap_or(d))
            .collect();
        SearchPath { dirs }
    }

    /// The directories, in order.
    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    fn searched(&self) -> String {
        self.dirs
            .iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Finds and validates provider `name`: the first directory of the
    /// search path that has a subdirectory of that name wins.
    pub fn find(&self, name: &str) -> Result<Provider> {
        validate_provider_name(name)?;
        for dir in &self.dirs {
            let candidate = dir.join(name);
            if candidate.is_dir() {
                return Provider::load(name, &candidate);
            }
        }
        Err(Error::ProviderNotFound {
            provider: name.to_owned(),
            searched: self.searched(),
        })
    }

    /// Lists every provider directory in every search directory, valid or
    /// not, with the reason. Unreadable search directories are skipped.
    pub fn diagnose(&self) -> Vec<Diagnosis> {
        let mut out: Vec<Diagnosis> = Vec::new();
        for dir in &self.dirs {
            let Ok(entries) = fs::read_dir(dir) else {
                tracing::debug!(dir = %dir.display(), "search directory not readable, skipped");
                continue;
            };
            let mut names: Vec<(String, PathBuf)> = entries
                .filter_map(|e| e.ok())
                .filter(|e| e.path().is_dir())
                .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
                .collect();
            names.sort();
            for (name, path) in names {
                let shadowed_by = out
                    .iter()
                    .find(|d| d.name == name && d.shadowed_by.is_none())
                    .map(|d| d.path.clone());
                let diag = match Provider::load(&name, &path) {
                    Ok(p) => Diagnosis {
                        name,
                        path,
                        valid: true,
                        reason: None,
                        shadowed_by,
                        parameters: p.parameters,
                        optional: p.optional.into_iter().collect(),
                    },
                    Err(e) => Diagnosis {
                        name,
                        path,
                        valid: false,
                        reason: Some(match e {
                            Error::InvalidProvider { reason, .. } => reason,
                            other => other.to_string(),
                        }),
                        shadowed_by,
                        parameters: Vec::new(),
                        optional: Vec::new(),
                    },
                };
                out.push(diag);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_list() {
        let text = "dir  where the files live\n\n\tpool\tthe\tpool \n# comment\nbare\n";
        let params = parse_parameters(text).unwrap();
        assert_eq!(
            params,
            vec![
                Parameter {
                    name: "dir".into(),
                    description: "where the files live".into()
                },
                Parameter {
                    name: "pool".into(),
                    description: "the\tpool".into()
                },
                Parameter {
                    name: "bare".into(),
                    description: String::new()
                },
            ]
        );
        assert!(
            parse_parameters("a x\na y\n")
                .unwrap_err()
                .contains("twice")
        );
        assert!(parse_parameters("a=b x\n").unwrap_err().contains("'='"));
    }
}
