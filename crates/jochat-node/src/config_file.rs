//! `--config FILE` and `--print-config`: a TOML file with the same keys as the flags.
//!
//! Precedence, highest first: flags, environment variables, the file, the defaults. The
//! arguments are parsed once without the file; every key of the file whose flag was given
//! neither on the command line nor in the environment is then added as that flag, and the
//! whole is parsed again, so the file goes through exactly the same checks as a flag.

use std::ffi::OsString;
use std::path::Path;

use clap::parser::ValueSource;
use clap::{ArgAction, ArgMatches, CommandFactory, FromArgMatches};

use crate::config::NodeConfig;
use crate::error::NodeError;

/// Flags that hold secrets: `--print-config` masks their values.
const SECRET_FLAGS: [&str; 1] = ["cluster-secret"];

/// Flags that make no sense in the file.
const NOT_IN_FILE: [&str; 4] = ["config", "print-config", "help", "version"];

/// Why the arguments could not be loaded.
#[derive(Debug)]
pub enum LoadError {
    /// What clap reports (including `--help` and `--version`, which are not failures):
    /// print it with [`clap::Error::exit`].
    Arguments(clap::Error),
    /// The file cannot be read, is not TOML, or holds an unknown key or a bad value.
    File(NodeError),
}

/// The configuration and what `--print-config` prints.
#[derive(Debug)]
pub struct Loaded {
    /// The effective configuration.
    pub config: NodeConfig,
    /// The effective configuration as TOML, secrets masked.
    pub effective: String,
}

fn file_error(path: &Path, rule: String) -> LoadError {
    LoadError::File(NodeError::Config {
        flag: "config",
        rule: format!("{}: {rule}", path.display()),
    })
}

/// The flag's value(s) as `--flag=value` arguments; `None` for a boolean flag set false.
fn as_arguments(
    path: &Path,
    key: &str,
    long: &str,
    flag: bool,
    value: &toml::Value,
) -> Result<Vec<OsString>, LoadError> {
    let scalar = |value: &toml::Value| -> Result<String, LoadError> {
        match value {
            toml::Value::String(text) => Ok(text.clone()),
            toml::Value::Integer(n) => Ok(n.to_string()),
            toml::Value::Float(x) => Ok(x.to_string()),
            toml::Value::Boolean(b) => Ok(b.to_string()),
            other => Err(file_error(
                path,
                format!("{key}: a {} cannot be a flag's value", other.type_str()),
            )),
        }
    };
    if flag {
        return match value {
            toml::Value::Boolean(true) => Ok(vec![format!("--{long}").into()]),
            toml::Value::Boolean(false) => Ok(Vec::new()),
            _ => Err(file_error(path, format!("{key}: must be true or false"))),
        };
    }
    let joined = match value {
        toml::Value::Array(items) => items
            .iter()
            .map(scalar)
            .collect::<Result<Vec<_>, _>>()?
            .join(","),
        other => scalar(other)?,
    };
    Ok(vec![format!("--{long}={joined}").into()])
}

/// Parses `args` (the program name first), with `--config`'s file under them.
///
/// # Errors
/// [`LoadError::Arguments`] for what clap refuses (or `--help`); [`LoadError::File`] for a
/// file that cannot be read or parsed, an unknown key (named), or a value its flag refuses.
pub fn load(args: impl IntoIterator<Item = impl Into<OsString>>) -> Result<Loaded, LoadError> {
    let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    let command = NodeConfig::command();
    let first = command
        .clone()
        .try_get_matches_from(&args)
        .map_err(LoadError::Arguments)?;
    let mut all = args.clone();
    if let Some(path) = first.get_one::<std::path::PathBuf>("config") {
        let text = std::fs::read_to_string(path)
            .map_err(|error| file_error(path, format!("cannot be read: {error}")))?;
        let table: toml::Table = text
            .parse()
            .map_err(|error| file_error(path, format!("not valid TOML: {error}")))?;
        for (key, value) in &table {
            let long = key.replace('_', "-");
            let arg = command
                .get_arguments()
                .find(|arg| arg.get_long() == Some(long.as_str()))
                .filter(|_| !NOT_IN_FILE.contains(&long.as_str()))
                .ok_or_else(|| {
                    file_error(
                        path,
                        format!(
                            "unknown key {key:?}: the keys are the flags' names, as in server-id"
                        ),
                    )
                })?;
            let given = matches!(
                first.value_source(arg.get_id().as_str()),
                Some(ValueSource::CommandLine | ValueSource::EnvVariable)
            );
            if given {
                continue;
            }
            let flag = matches!(arg.get_action(), ArgAction::SetTrue);
            all.extend(as_arguments(path, key, &long, flag, value)?);
        }
    }
    let matches = command
        .clone()
        .try_get_matches_from(&all)
        .map_err(
            |error| match first.get_one::<std::path::PathBuf>("config") {
                // The file's values are what can be wrong now: say so.
                Some(path) => file_error(path, error.render().to_string().trim().to_owned()),
                None => LoadError::Arguments(error),
            },
        )?;
    let config = NodeConfig::from_arg_matches(&matches).map_err(LoadError::Arguments)?;
    Ok(Loaded {
        effective: effective(&command, &matches),
        config,
    })
}

/// The effective configuration as TOML, one key per flag with a value, secrets masked.
fn effective(command: &clap::Command, matches: &ArgMatches) -> String {
    let mut text = String::from("# The effective configuration of this jochat-node.\n");
    for arg in command.get_arguments() {
        let Some(long) = arg.get_long() else {
            continue;
        };
        if NOT_IN_FILE.contains(&long) {
            continue;
        }
        let id = arg.get_id().as_str();
        if matches!(arg.get_action(), ArgAction::SetTrue) {
            text.push_str(&format!("{long} = {}\n", matches.get_flag(id)));
            continue;
        }
        let Some(raw) = matches.get_raw(id) else {
            continue;
        };
        let values: Vec<String> = raw.map(|v| v.to_string_lossy().into_owned()).collect();
        if SECRET_FLAGS.contains(&long) {
            text.push_str(&format!("{long} = \"********\"\n"));
            continue;
        }
        let rendered: Vec<String> = values
            .iter()
            .map(|v| {
                if v.parse::<i64>().is_ok() || v.parse::<f64>().is_ok() {
                    v.clone()
                } else {
                    toml::Value::String(v.clone()).to_string()
                }
            })
            .collect();
        if arg.get_value_delimiter().is_some() {
            text.push_str(&format!("{long} = [{}]\n", rendered.join(", ")));
        } else {
            text.push_str(&format!("{long} = {}\n", rendered.join(", ")));
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().expect("a temporary file");
        std::fs::write(file.path(), text).expect("the file is written");
        file
    }

    fn load_with(file: &tempfile::NamedTempFile, flags: &[&str]) -> Result<Loaded, LoadError> {
        let mut args = vec![
            "jochat-node".to_owned(),
            "--config".to_owned(),
            file.path().display().to_string(),
        ];
        args.extend(flags.iter().map(|f| (*f).to_owned()));
        load(args)
    }

    #[test]
    fn the_file_sets_what_flags_do_not() {
        let f = file(
            "server-id = 2\nport = 6002\npeers = [\"1:127.0.0.1:6001\", \"3:127.0.0.1:6003\"]\n\
             snapshot_threshold = 500\nforce-new-cluster = false\ncluster-secret = \"s3cret\"\n",
        );
        let loaded = load_with(&f, &["--port", "7002"]).unwrap();
        assert_eq!(loaded.config.server_id, 2);
        assert_eq!(loaded.config.port, 7002, "a flag overrides the file");
        assert_eq!(loaded.config.peers.len(), 2);
        assert_eq!(loaded.config.snapshot_threshold, 500);
        assert!(!loaded.config.force_new_cluster);
        assert_eq!(loaded.config.cluster_secret.as_deref(), Some("s3cret"));
        assert!(
            loaded.effective.contains("server-id = 2\n"),
            "{}",
            loaded.effective
        );
        assert!(loaded.effective.contains("port = 7002\n"));
        assert!(loaded.effective.contains("cluster-secret = \"********\"\n"));
        assert!(!loaded.effective.contains("s3cret"));
        // What it prints reads back to the same configuration.
        let again = file(&loaded.effective.replace(
            "cluster-secret = \"********\"",
            "cluster-secret = \"s3cret\"",
        ));
        let reloaded = load_with(&again, &[]).unwrap();
        assert_eq!(reloaded.effective, loaded.effective);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_named() {
        let unknown = load_with(&file("server-id = 2\nsnapshot-treshold = 5\n"), &[]).unwrap_err();
        let LoadError::File(error) = unknown else {
            panic!("{unknown:?}");
        };
        assert!(
            error
                .to_string()
                .contains("unknown key \"snapshot-treshold\""),
            "{error}"
        );
        let bad = load_with(&file("port = \"high\"\n"), &[]).unwrap_err();
        let LoadError::File(error) = bad else {
            panic!("{bad:?}");
        };
        assert!(error.to_string().contains("--port"), "{error}");
        let not_toml = load_with(&file("port = = 1\n"), &[]).unwrap_err();
        assert!(matches!(not_toml, LoadError::File(_)));
    }
}
