//! `kv --config FILE`: settings kept in a TOML file, one section per
//! subcommand (`[server]`, `[proxy]`, `[up]`, `[cli]`), each key the name of
//! one of that subcommand's long flags:
//!
//! ```toml
//! [server]
//! listen = "0.0.0.0:7070"
//! data-dir = "/var/lib/kv"
//! fsync = "always"
//! in-memory = false
//!
//! [proxy]
//! cache-ttl = "30s"
//! allow-origin = ["http://localhost:3000"]
//! ```
//!
//! The file's values become the flags' defaults, so the environment and the
//! command line override them (clap's own order: command line, then `KV_…`
//! variables, then defaults). A setting given explicitly also drops the file
//! settings it conflicts with (`--in-memory` drops the file's `data-dir`,
//! `--requirepass-file` its `requirepass`), as a flag would.
//!
//! Nothing here names a flag: keys, their kinds and their checks all come
//! from the clap [`Command`], so a new flag is a new key with no code here.
//! Keys are checked in every section, so that a typo is found on the first
//! run; values are checked (by the flags' own parsers) only in the section
//! of the subcommand being run, the one whose values are used.

use clap::error::{ContextKind, ContextValue};
use clap::{Arg, ArgAction, Command};
use std::path::{Path, PathBuf};
use thiserror::Error;
use toml_edit::{Document, Item, Value};

/// Why a config file was refused.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {}: {error}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        error: std::io::Error,
    },
    /// Something in the file is wrong, at a line.
    #[error("{}, line {line}: {problem}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The line, counting from 1.
        line: usize,
        /// What is wrong there.
        problem: Problem,
    },
}

/// What is wrong at one line of a config file.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Problem {
    /// The text is not TOML.
    #[error("{0}")]
    Syntax(String),
    /// A key outside of any section.
    #[error("'{key}' is outside any section: settings go under {sections}")]
    Unsectioned {
        /// The key.
        key: String,
        /// The sections there are, e.g. `[server], [proxy]`.
        sections: String,
    },
    /// A section that is no subcommand.
    #[error("unknown section [{name}] (there are {sections})")]
    UnknownSection {
        /// The section's name.
        name: String,
        /// The sections there are.
        sections: String,
    },
    /// A key that is no flag of the section's subcommand.
    #[error("unknown key '{key}' in [{section}]")]
    UnknownKey {
        /// The section.
        section: String,
        /// The key.
        key: String,
    },
    /// A switch (a flag without a value) given something else than a
    /// boolean.
    #[error("'{key}' is a switch: true or false")]
    NotASwitch {
        /// The key.
        key: String,
    },
    /// A list or a table given to a flag that takes one value.
    #[error("'{key}' takes one value")]
    NotOneValue {
        /// The key.
        key: String,
    },
    /// A value the flag's parser refused.
    #[error("{}", invalid_value(key, value, reason))]
    InvalidValue {
        /// The key.
        key: String,
        /// The value refused (one item of a list).
        value: String,
        /// Why, in the parser's words.
        reason: String,
    },
    /// Two settings of the file that cannot be used together.
    #[error("'{key}' cannot be used with '{other}' (line {other_line})")]
    Conflict {
        /// The later key.
        key: String,
        /// The earlier key.
        other: String,
        /// The earlier key's line.
        other_line: usize,
    },
}

/// The value is quoted only when the parser's reason does not already
/// quote it (`parse_size` does, humantime does not), so it is said once.
fn invalid_value(key: &str, value: &str, reason: &str) -> String {
    if reason.contains(value) {
        format!("'{key}': {reason}")
    } else {
        format!("invalid value '{value}' for '{key}': {reason}")
    }
}

/// A config file whose keys have been checked against a command.
#[derive(Debug, Clone)]
pub struct ConfigFile {
    path: PathBuf,
    sections: Vec<Section>,
}

/// One `[subcommand]` section.
#[derive(Debug, Clone)]
struct Section {
    name: String,
    settings: Vec<Setting>,
}

/// One key of a section, matched to its flag.
#[derive(Debug, Clone)]
struct Setting {
    /// The key, as written: the flag's long name.
    key: String,
    /// The flag's clap id (`data_dir` for `data-dir`).
    id: String,
    line: usize,
    value: SettingValue,
}

/// A value, shaped by its flag's kind.
#[derive(Debug, Clone, PartialEq, Eq)]
enum SettingValue {
    /// A flag without a value (`--repair`).
    Switch(bool),
    /// A flag taking one value.
    One(String),
    /// A repeatable flag (`--allow-origin`): a list, or one value.
    Many(Vec<String>),
}

impl SettingValue {
    /// Whether the setting says anything: a switch set to false is the
    /// flag's absence.
    fn is_set(&self) -> bool {
        !matches!(self, SettingValue::Switch(false))
    }
}

impl ConfigFile {
    /// Reads `path` and checks its keys against `cmd` (see [`ConfigFile::parse`]).
    ///
    /// # Errors
    ///
    /// If the file cannot be read, or [`ConfigFile::parse`] refuses it.
    pub fn load(path: &Path, cmd: &Command) -> Result<ConfigFile, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.to_owned(),
            error,
        })?;
        ConfigFile::parse(path, &text, cmd)
    }

    /// Parses `text` (the contents of `path`, named in errors) as TOML and
    /// matches every section to a subcommand of `cmd` and every key to a
    /// long flag of it, shaping each value by the flag's kind.
    ///
    /// # Errors
    ///
    /// The first problem in the file, with its line.
    pub fn parse(path: &Path, text: &str, cmd: &Command) -> Result<ConfigFile, ConfigError> {
        let invalid = |offset: Option<usize>, problem: Problem| ConfigError::Invalid {
            path: path.to_owned(),
            line: line_of(text, offset.unwrap_or(0)),
            problem,
        };
        let doc = Document::parse(text).map_err(|e| {
            invalid(
                e.span().map(|s| s.start),
                Problem::Syntax(e.message().to_owned()),
            )
        })?;
        let mut built = cmd.clone();
        built.build();
        let subcommands: Vec<&Command> = built
            .get_subcommands()
            .filter(|s| s.get_name() != "help")
            .collect();
        let section_list = subcommands
            .iter()
            .map(|s| format!("[{}]", s.get_name()))
            .collect::<Vec<_>>()
            .join(", ");
        let root = doc.as_table();
        let mut sections = Vec::new();
        for (name, item) in root.iter() {
            let at = root.get_key_value(name).and_then(|(k, _)| k.span());
            let at = at.map(|s| s.start);
            let Some(table) = item.as_table_like() else {
                return Err(invalid(
                    at,
                    Problem::Unsectioned {
                        key: name.to_owned(),
                        sections: section_list.clone(),
                    },
                ));
            };
            let Some(sub) = subcommands.iter().find(|s| s.get_name() == name) else {
                return Err(invalid(
                    at,
                    Problem::UnknownSection {
                        name: name.to_owned(),
                        sections: section_list.clone(),
                    },
                ));
            };
            let mut settings = Vec::new();
            for (key, item) in table.iter() {
                let at = table
                    .get_key_value(key)
                    .and_then(|(k, _)| k.span())
                    .map(|s| s.start);
                let Some(arg) = sub
                    .get_arguments()
                    .find(|a| a.get_long() == Some(key) && is_setting(a))
                else {
                    return Err(invalid(
                        at,
                        Problem::UnknownKey {
                            section: name.to_owned(),
                            key: key.to_owned(),
                        },
                    ));
                };
                let value = shape(arg, item).ok_or_else(|| {
                    let key = key.to_owned();
                    let problem = match arg.get_action() {
                        ArgAction::SetTrue => Problem::NotASwitch { key },
                        _ => Problem::NotOneValue { key },
                    };
                    invalid(at, problem)
                })?;
                settings.push(Setting {
                    key: key.to_owned(),
                    id: arg.get_id().to_string(),
                    line: line_of(text, at.unwrap_or(0)),
                    value,
                });
            }
            sections.push(Section {
                name: name.to_owned(),
                settings,
            });
        }
        Ok(ConfigFile {
            path: path.to_owned(),
            sections,
        })
    }

    /// Makes the settings of section `sub` the defaults of `sub`'s flags in
    /// `cmd`, leaving out those whose flag `explicit` says was given (on the
    /// command line or in the environment) and those that conflict with
    /// one that was. `cmd` must be the command the file was parsed against
    /// (or one with the same flags), not yet built.
    ///
    /// # Errors
    ///
    /// A value the flag's parser refuses, or two settings of the section
    /// that conflict.
    pub fn apply(
        &self,
        cmd: Command,
        sub: &str,
        explicit: impl Fn(&str) -> bool,
    ) -> Result<Command, ConfigError> {
        let Some(section) = self.sections.iter().find(|s| s.name == sub) else {
            return Ok(cmd);
        };
        for setting in &section.settings {
            self.check_value(&cmd, sub, setting)?;
        }
        let mut built = cmd.clone();
        built.build();
        let Some(built_sub) = built.find_subcommand(sub) else {
            return Ok(cmd);
        };
        let conflict = |a: &str, b: &str| {
            let (Some(a), Some(b)) = (arg_of(built_sub, a), arg_of(built_sub, b)) else {
                return false;
            };
            let names = |x: &Arg, y: &Arg| {
                built_sub
                    .get_arg_conflicts_with(x)
                    .iter()
                    .any(|c| c.get_id() == y.get_id())
            };
            names(a, b) || names(b, a)
        };
        let given: Vec<&str> = built_sub
            .get_arguments()
            .map(|a| a.get_id().as_str())
            .filter(|id| explicit(id))
            .collect();
        let kept: Vec<&Setting> = section
            .settings
            .iter()
            .filter(|s| s.value.is_set())
            .filter(|s| !explicit(&s.id) && !given.iter().any(|g| conflict(&s.id, g)))
            .collect();
        for (i, later) in kept.iter().enumerate() {
            if let Some(earlier) = kept[..i].iter().find(|e| conflict(&e.id, &later.id)) {
                return Err(self.invalid(
                    later.line,
                    Problem::Conflict {
                        key: later.key.clone(),
                        other: earlier.key.clone(),
                        other_line: earlier.line,
                    },
                ));
            }
        }
        Ok(cmd.mut_subcommand(sub, |mut c| {
            for setting in kept {
                let value = setting.value.clone();
                c = c.mut_arg(&setting.id, move |arg| match value {
                    SettingValue::Switch(_) => arg.default_value("true"),
                    SettingValue::One(v) => arg.default_value(v),
                    SettingValue::Many(vs) => arg.default_values(vs),
                });
            }
            c
        }))
    }

    /// Runs the flag's own parser on the value, by parsing `kv SUB
    /// --key=value` without the environment (whose variables could
    /// conflict with the key, or be wrong themselves).
    fn check_value(&self, cmd: &Command, sub: &str, setting: &Setting) -> Result<(), ConfigError> {
        let values = match &setting.value {
            SettingValue::Switch(_) => return Ok(()),
            SettingValue::One(v) => std::slice::from_ref(v),
            SettingValue::Many(vs) => vs.as_slice(),
        };
        let mut argv = vec![cmd.get_name().to_owned(), sub.to_owned()];
        // `--key=value`: a value starting with `-` is still a value.
        argv.extend(values.iter().map(|v| format!("--{}={v}", setting.key)));
        let trial = cmd
            .clone()
            .mut_subcommand(sub, |c| c.mut_args(|a| a.env(None)));
        match trial.try_get_matches_from(argv) {
            Ok(_) => Ok(()),
            Err(e) => {
                let value = match e.get(ContextKind::InvalidValue) {
                    Some(ContextValue::String(v)) => v.clone(),
                    _ => values.join(", "),
                };
                Err(self.invalid(
                    setting.line,
                    Problem::InvalidValue {
                        key: setting.key.clone(),
                        value,
                        reason: reason_of(&e),
                    },
                ))
            }
        }
    }

    fn invalid(&self, line: usize, problem: Problem) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.clone(),
            line,
            problem,
        }
    }
}

/// Whether a flag can be set in the file: a long flag of the subcommand
/// itself (not `--config`, which is global, nor `--help`), taking a value,
/// values or none.
fn is_setting(arg: &Arg) -> bool {
    arg.get_long().is_some()
        && !arg.is_positional()
        && !arg.is_global_set()
        && matches!(
            arg.get_action(),
            ArgAction::Set | ArgAction::Append | ArgAction::SetTrue
        )
}

fn arg_of<'c>(cmd: &'c Command, id: &str) -> Option<&'c Arg> {
    cmd.get_arguments().find(|a| a.get_id() == id)
}

/// The item as the flag takes it; `None` if it cannot be. Numbers and
/// other scalars become their text, for the flag's parser to judge
/// (`idle-timeout = 300` is 300 seconds, as `--idle-timeout 300`).
fn shape(arg: &Arg, item: &Item) -> Option<SettingValue> {
    let value = item.as_value()?;
    match arg.get_action() {
        ArgAction::SetTrue => value.as_bool().map(SettingValue::Switch),
        ArgAction::Append => match value.as_array() {
            Some(list) => list
                .iter()
                .map(scalar)
                .collect::<Option<Vec<_>>>()
                .map(SettingValue::Many),
            None => scalar(value).map(|v| SettingValue::Many(vec![v])),
        },
        _ => scalar(value).map(SettingValue::One),
    }
}

fn scalar(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.value().clone()),
        Value::Integer(i) => Some(i.value().to_string()),
        Value::Float(f) => Some(f.value().to_string()),
        Value::Boolean(b) => Some(b.value().to_string()),
        Value::Datetime(d) => Some(d.value().to_string()),
        Value::Array(_) | Value::InlineTable(_) => None,
    }
}

/// Why clap refused a value, without its usage text: the parser's own
/// message, or the values the flag accepts.
fn reason_of(e: &clap::Error) -> String {
    if let Some(source) = std::error::Error::source(e) {
        return source.to_string();
    }
    if let Some(ContextValue::Strings(valid)) = e.get(ContextKind::ValidValue) {
        return format!("expected {}", valid.join(", "));
    }
    let text = e.to_string();
    let first = text.lines().next().unwrap_or_default();
    first.strip_prefix("error: ").unwrap_or(first).to_owned()
}

/// The line (from 1) holding byte `offset` of `text`.
fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_count_from_one() {
        assert_eq!(line_of("a\nb\nc", 0), 1);
        assert_eq!(line_of("a\nb\nc", 2), 2);
        assert_eq!(line_of("a\nb\nc", 4), 3);
        assert_eq!(line_of("a\n", 99), 2);
    }

    #[test]
    fn a_value_is_quoted_once() {
        assert_eq!(
            invalid_value("max-key", "9x", "invalid size '9x'"),
            "'max-key': invalid size '9x'"
        );
        assert_eq!(
            invalid_value("idle-timeout", "soon", "expected number"),
            "invalid value 'soon' for 'idle-timeout': expected number"
        );
    }
}
