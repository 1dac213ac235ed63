//! The health gate run after booting a new image: commands that must succeed and systemd
//! units that must be active, all within one timeout. The server-reachability check is
//! made by the update cycle, which owns the transport.

use std::time::Duration;

use tokio::process::Command;

use crate::config::HealthConfig;

/// The first check that failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("health check {check:?} failed: {detail}")]
pub struct HealthFailure {
    /// Which check.
    pub check: String,
    /// What it said.
    pub detail: String,
}

/// Runs every command and unit check in order; stops at the first failure.
pub async fn run_checks(cfg: &HealthConfig) -> Result<(), HealthFailure> {
    let deadline = Duration::from_secs(cfg.timeout_secs.max(1));
    let all = async {
        for argv in &cfg.commands {
            run_command(argv).await?;
        }
        for unit in &cfg.units {
            let argv = vec![
                "systemctl".to_string(),
                "is-active".to_string(),
                "--quiet".to_string(),
                unit.clone(),
            ];
            run_command(&argv).await.map_err(|f| HealthFailure {
                check: format!("unit {unit}"),
                detail: f.detail,
            })?;
        }
        Ok(())
    };
    match tokio::time::timeout(deadline, all).await {
        Ok(r) => r,
        Err(_) => Err(HealthFailure {
            check: "timeout".into(),
            detail: format!("checks did not finish within {} s", deadline.as_secs()),
        }),
    }
}

async fn run_command(argv: &[String]) -> Result<(), HealthFailure> {
    let name = argv.join(" ");
    let Some((prog, args)) = argv.split_first() else {
        return Err(HealthFailure {
            check: "(empty command)".into(),
            detail: "a health command must name a program".into(),
        });
    };
    let out = Command::new(prog)
        .args(args)
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| HealthFailure {
            check: name.clone(),
            detail: format!("could not run: {e}"),
        })?;
    if out.status.success() {
        return Ok(());
    }
    let mut detail = format!("{}", out.status);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stderr = stderr.trim();
    if !stderr.is_empty() {
        detail.push_str(": ");
        detail.extend(stderr.chars().take(300));
    }
    Err(HealthFailure {
        check: name,
        detail,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(commands: &[&[&str]], timeout: u64) -> HealthConfig {
        HealthConfig {
            commands: commands
                .iter()
                .map(|c| c.iter().map(|s| s.to_string()).collect())
                .collect(),
            units: vec![],
            require_server: false,
            timeout_secs: timeout,
        }
    }

    #[tokio::test]
    async fn passing_and_failing_commands() {
        run_checks(&cfg(&[&["true"], &["sh", "-c", "exit 0"]], 10))
            .await
            .unwrap();
        let f = run_checks(&cfg(
            &[&["true"], &["sh", "-c", "echo broken >&2; exit 3"]],
            10,
        ))
        .await
        .unwrap_err();
        assert!(f.check.contains("exit 3"));
        assert!(f.detail.contains("broken"));
        let f = run_checks(&cfg(&[&["/nonexistent/program"]], 10))
            .await
            .unwrap_err();
        assert!(f.detail.contains("could not run"));
    }

    #[tokio::test]
    async fn a_hanging_check_times_out() {
        let f = run_checks(&cfg(&[&["sleep", "30"]], 1)).await.unwrap_err();
        assert_eq!(f.check, "timeout");
    }
}
