//! `jochat bench`: a closed-loop benchmark over the failover client.
//!
//! One client task per concurrency slot calls the chosen operation again and again for the
//! warm-up and then the measured duration; the latency of each successful call in the
//! measured window goes into that slot's HDR histogram, errors are counted apart by kind.
//! The accounts and sessions the operation needs are made first (with a progress bar). With
//! `--local N` it first starts its own N-node cluster of `jochat-node` processes in a
//! temporary folder, reports each node's peak resident memory, and stops them at the end.
//!
//! # Layout
//!
//! - this module: what both benchmarks share: durations, accounts, progress bars.
//! - [`load`]: the closed-loop load benchmark (`jochat bench`).
//! - [`failover`]: the failover benchmark (`jochat bench failover`).
//! - [`local`]: the `--local` cluster of node processes (`jochat_process`).

mod failover;
mod load;
mod local;

pub use failover::failover;
pub use load::run;

use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use jochat_client::{ChatServerClient, ClientError, SessionToken};

/// The password of every benchmark account.
const PASSWORD: &str = "bench-password";
/// How long after the load stops `--local` nodes' idle memory is read.
const IDLE_SETTLE: Duration = Duration::from_secs(3);
/// Sends per preload batch in flight at once.
const PRELOAD_CONCURRENCY: usize = 32;

/// Parses `10s`, `500ms`, `2m` or a plain number of seconds.
pub fn parse_duration(raw: &str) -> Result<Duration, String> {
    let raw = raw.trim();
    let (number, unit) = match raw.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(at) => raw.split_at(at),
        None => (raw, "s"),
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{raw:?}: expected a number with ms, s or m, e.g. 10s"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        other => return Err(format!("{raw:?}: unknown unit {other:?} (ms, s or m)")),
    };
    if !(0.0..=86_400.0).contains(&seconds) {
        return Err(format!("{raw:?}: must be between 0 and 24 h"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

fn progress(length: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(length);
    bar.set_style(
        ProgressStyle::with_template("{msg:>12} [{bar:30}] {pos}/{len} {per_sec}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_message(what.to_owned());
    bar
}

/// Makes `count` accounts `<prefix><i>` and logs each in.
async fn accounts(
    client: &ChatServerClient,
    prefix: &str,
    count: usize,
) -> anyhow::Result<Vec<(String, SessionToken)>> {
    let bar = progress(count as u64, "accounts");
    let mut sessions = Vec::with_capacity(count);
    for i in 0..count {
        let name = format!("{prefix}{i}");
        match client.sign_up(&name, PASSWORD).await {
            Ok(_) | Err(ClientError::AlreadyExists(_)) => {}
            Err(error) => return Err(error.into()),
        }
        let token = client.log_in(&name, PASSWORD).await?.token;
        sessions.push((name, token));
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(sessions)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_units() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("5h").unwrap_err().contains("unknown unit"));
    }
}
