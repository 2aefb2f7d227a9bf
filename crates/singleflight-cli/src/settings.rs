//! Where a flag's value comes from, in this order: the command line, the
//! environment (`SINGLEFLIGHT_<FLAG>`: `--memo-ttl` is
//! `SINGLEFLIGHT_MEMO_TTL`), a subcommand's `--config` TOML file (the flag's
//! name with `_` for `-`: `memo_ttl`), then the flag's default.
//!
//! Both layers are derived from the flags themselves, so a new flag gets
//! its variable and its file key with nothing written for them: every long
//! flag gets its variable from [`with_env`], and a file's keys become the
//! flags' defaults before the command line is parsed again, which is how
//! clap puts the command line and the environment above them.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::{Arg, ArgAction, Command, CommandFactory as _, FromArgMatches as _};
use toml::Spanned;

use crate::{BadInput, Cli};

/// The prefix of every variable that sets a flag.
pub(crate) const ENV_PREFIX: &str = "SINGLEFLIGHT_";

/// The variable that sets `--long`.
fn env_name(long: &str) -> String {
    format!(
        "{ENV_PREFIX}{}",
        long.replace('-', "_").to_ascii_uppercase()
    )
}

/// `command` with every long flag, in every subcommand, also read from its
/// variable; a switch (`--quiet`) reads `true`/`false`, `1`/`0`, `yes`/`no`
/// or `on`/`off` there.
pub(crate) fn with_env(command: Command) -> Command {
    command
        .mut_args(|arg| {
            let Some(name) = arg.get_long().map(env_name) else {
                return arg;
            };
            let arg = arg.env(name);
            if matches!(arg.get_action(), ArgAction::SetTrue) {
                arg.value_parser(clap::builder::BoolishValueParser::new())
            } else {
                arg
            }
        })
        .mut_subcommands(with_env)
}

/// Parses the command line as the binary does: flags, then the environment,
/// then `--config`, then the defaults.
pub(crate) fn parse(args: Vec<OsString>) -> anyhow::Result<Cli> {
    let base = Cli::command();
    let mut command = with_env(base.clone());
    let mut matches = command
        .clone()
        .try_get_matches_from(&args)
        .map_err(from_env)?;
    let file = matches.subcommand().and_then(|(name, sub)| {
        let path = sub.try_get_one::<PathBuf>("config").ok().flatten()?;
        Some((name.to_string(), path.clone()))
    });
    if let Some((name, path)) = file
        && let Some(flags) = base.find_subcommand(&name)
    {
        let defaults = read(&path, flags)?;
        command = command.mut_subcommand(&name, |mut sub| {
            for (id, value) in defaults {
                sub = sub.mut_arg(id, |arg| arg.default_value(value));
            }
            sub
        });
        matches = command.try_get_matches_from(&args).map_err(from_env)?;
    }
    Ok(Cli::from_arg_matches(&matches)?)
}

/// A bad value that came from the environment, said as the variable it
/// came from (clap names the flag, which the user did not write); any
/// other error as it is.
fn from_env(error: clap::Error) -> anyhow::Error {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    let context = |kind| match error.get(kind) {
        Some(ContextValue::String(text)) => Some(text.clone()),
        _ => None,
    };
    if matches!(
        error.kind(),
        ErrorKind::ValueValidation | ErrorKind::InvalidValue
    ) && let (Some(flag), Some(value)) = (
        context(ContextKind::InvalidArg),
        context(ContextKind::InvalidValue),
    ) {
        let long = flag.trim_start_matches('-');
        let variable = env_name(long.split([' ', '=']).next().unwrap_or(long));
        if std::env::var(&variable).is_ok_and(|set| set == value) {
            let why = std::error::Error::source(&error)
                .map_or_else(|| error.kind().to_string(), ToString::to_string);
            return BadInput::new(format!("{variable}={value:?}: {why}; fix or unset it")).into();
        }
    }
    error.into()
}

/// The flags a file may set: the long ones but `--config` itself.
fn settable<'a>(flags: &'a Command, key: &str) -> Option<&'a Arg> {
    flags
        .get_arguments()
        .find(|arg| arg.get_id() == key && arg.get_long().is_some() && key != "config")
}

/// The file's settings as `(flag id, value)`, each checked by its flag's
/// own parser, so a bad one is reported with the file, the line and the key.
fn read(path: &Path, flags: &Command) -> anyhow::Result<Vec<(String, String)>> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        BadInput::new(format!(
            "cannot read the config {}: {e}; check --config",
            path.display()
        ))
    })?;
    let line_of = |offset: usize| text[..offset.min(text.len())].matches('\n').count() + 1;
    let table: BTreeMap<Spanned<String>, Spanned<toml::Value>> =
        toml::from_str(&text).map_err(|e| {
            let at = e
                .span()
                .map(|s| format!(" line {}", line_of(s.start)))
                .unwrap_or_default();
            // toml's message is one sentence; its multi-line snippet is left out.
            let message = e.message().trim().replace('\n', " ");
            BadInput::new(format!(
                "config {}{at}: {message}; fix or remove it",
                path.display()
            ))
        })?;
    let mut settings = Vec::new();
    for (key, value) in table {
        let at = format!(
            "config {} line {}",
            path.display(),
            line_of(key.span().start)
        );
        let key = key.into_inner();
        let Some(arg) = settable(flags, &key) else {
            return Err(BadInput::new(format!(
                "{at}: unknown key `{key}`; the keys are the flags' names with `_` for `-` (see --help); fix or remove it"
            ))
            .into());
        };
        let value = match value.into_inner() {
            toml::Value::String(s) => s,
            toml::Value::Integer(n) => n.to_string(),
            toml::Value::Float(x) => x.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            _ => {
                return Err(BadInput::new(format!(
                    "{at}: `{key}` takes one value, not a list or a table"
                ))
                .into());
            }
        };
        check(arg, &value).map_err(|why| {
            BadInput::new(format!(
                "{at}: `{key}` = {value:?}: {why}; fix or remove it"
            ))
        })?;
        settings.push((key, value));
    }
    Ok(settings)
}

/// Runs `value` through the flag's parser alone; the reason it was refused.
fn check(arg: &Arg, value: &str) -> Result<(), String> {
    let long = arg.get_long().unwrap_or_default();
    let argv: Vec<String> = if matches!(arg.get_action(), ArgAction::SetTrue) {
        match value {
            "true" => vec![format!("--{long}")],
            "false" => vec![],
            _ => return Err("takes true or false".into()),
        }
    } else {
        vec![format!("--{long}={value}")]
    };
    Command::new("config")
        .no_binary_name(true)
        .arg(arg.clone())
        .try_get_matches_from(argv)
        .map(drop)
        .map_err(|e| match std::error::Error::source(&e) {
            Some(why) => why.to_string(),
            None => e.kind().to_string(),
        })
}
