//! `jochat`: JoChat from the command line, a thin frontend over `jochat-client`.
//!
//! `jochat [--servers HOST:PORT,...] [--session-file PATH] [--json] [--deadline-ms N] COMMAND`.
//! Output is text by default and one JSON document with `--json`. On failure it prints one
//! line, `error: <message>`, on stderr and exits with 2 for bad usage or input and 1 otherwise.
//!
//! # Layout
//!
//! - `args`: the command line (clap).
//! - `commands`: running one command: servers, session, password, the client call.
//! - `session`: the saved session file (owner-only permissions).
//! - `output`: text and JSON rendering.
//! - `live`: `watch` and `chat`, the live modes over Subscribe.
//! - `cert`: `jochat cert`, a CA and the node and client certificates it signs (rcgen).
//! - `bench`: `jochat bench`, the load generator (and `--local`, which starts the nodes it
//!   measures).
//! - this file: parsing, the runtime, printing, and the exit status.

#![forbid(unsafe_code)]

mod args;
mod bench;
mod cert;
mod commands;
mod live;
mod output;
mod session;

use std::process::ExitCode;

use args::Cli;
use clap::error::ErrorKind;
use clap::Parser;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => return usage_error(&error),
    };
    let json = cli.json;
    // One thread runs every command. Most make one call at a time; `watch`, `chat` and
    // `web` wait on the network far more than they compute; and `bench` keeps the load
    // generator to one core's share, so that on a small machine the nodes it measures keep
    // the rest (its figures in docs/performance.md were taken this way).
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(commands::run(cli)) {
        Ok(output) => {
            if json {
                if !output.json.is_null() {
                    println!("{}", output.json);
                }
            } else if !output.text.is_empty() {
                println!("{}", output.text);
            }
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: {}", one_line(&format!("{error:#}")));
            ExitCode::from(commands::exit_status(&error))
        }
    }
}

/// Reports a command line clap refused. Help and version go out as clap writes them; a
/// mistake becomes one `error:` line (exit status 2).
fn usage_error(error: &clap::Error) -> ExitCode {
    match error.kind() {
        ErrorKind::DisplayHelp
        | ErrorKind::DisplayVersion
        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            // Nothing sensible is left to do if the terminal is gone.
            let _ = error.print();
            ExitCode::from(u8::try_from(error.exit_code()).unwrap_or(2))
        }
        _ => {
            eprintln!("{}", usage_line(error));
            ExitCode::from(2)
        }
    }
}

/// Clap's message without its usage and tips, on one line: `error: ...`.
fn usage_line(error: &clap::Error) -> String {
    let rendered = error.render().to_string();
    let message: Vec<&str> = rendered
        .lines()
        .take_while(|line| !line.trim().is_empty())
        .map(str::trim)
        .collect();
    let line = message.join(" ");
    if line.starts_with("error:") {
        line
    } else {
        format!("error: {line}")
    }
}

/// `text` on one line: every line break becomes a space.
fn one_line(text: &str) -> String {
    text.split(['\r', '\n'])
        .filter(|part| !part.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(args: &[&str]) -> clap::Error {
        Cli::try_parse_from(std::iter::once("jochat").chain(args.iter().copied())).unwrap_err()
    }

    #[test]
    fn usage_errors_are_one_line() {
        assert_eq!(
            usage_line(&refused(&["signup"])),
            "error: the following required arguments were not provided: <USER>"
        );
        assert_eq!(
            usage_line(&refused(&["fly"])),
            "error: unrecognized subcommand 'fly'"
        );
        let line = usage_line(&refused(&["inbox", "--limit", "many"]));
        assert!(line.starts_with("error: invalid value 'many'"), "{line}");
        assert!(!line.contains('\n'));
    }

    #[test]
    fn messages_are_joined_on_one_line() {
        assert_eq!(one_line("a\nb\r\nc"), "a b c");
    }
}
