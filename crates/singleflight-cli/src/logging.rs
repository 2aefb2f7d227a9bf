//! The log: its filter (`--log-level`, else `RUST_LOG`, else a default per
//! subcommand) and its format (text for people, JSON lines for shippers),
//! on stderr.

use std::io;

use clap::{Args, ValueEnum};
use tracing_subscriber::EnvFilter;

use crate::BadInput;

/// The log flags, taken by every subcommand.
#[derive(Args, Clone, Debug, Default)]
pub struct LogFlags {
    /// What to log: a level (error, warn, info, debug, trace) or a filter in
    /// RUST_LOG's syntax (`info,singleflight::access=off`); wins over RUST_LOG
    /// [default: RUST_LOG, else info (warn for demo and load)].
    #[arg(long, global = true)]
    pub log_level: Option<String>,
    /// `text` for people, `json` for log shippers (one object per line).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// How log lines are written.
#[derive(ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum LogFormat {
    /// A timestamp, the level, the message and `key=value` fields.
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target`, `message` and the fields.
    Json,
}

/// Installs the log for the process (kept if one is already installed).
///
/// # Errors
///
/// A `--log-level` or `RUST_LOG` that is not a filter.
pub(crate) fn init(flags: &LogFlags, default: &str) -> anyhow::Result<()> {
    let filter = match (&flags.log_level, std::env::var("RUST_LOG")) {
        (Some(level), _) => EnvFilter::try_new(level).map_err(|e| {
            BadInput::new(format!(
                "--log-level {level:?}: {e}; use error, warn, info, debug or trace, or a filter like info,singleflight::access=off"
            ))
        })?,
        (None, Ok(text)) if !text.trim().is_empty() => EnvFilter::try_new(&text).map_err(|e| {
            BadInput::new(format!(
                "RUST_LOG={text:?}: {e}; use error, warn, info, debug or trace, or a filter like info,singleflight::access=off"
            ))
        })?,
        _ => EnvFilter::new(default),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(io::stderr);
    // Already set (a test calling run twice): keep the first.
    let _ = match flags.log_format {
        LogFormat::Text => builder
            .with_ansi(io::IsTerminal::is_terminal(&io::stderr()))
            .with_target(false)
            .try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .try_init(),
    };
    Ok(())
}
