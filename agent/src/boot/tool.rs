//! Bootloader variables kept as text by an external tool (`grub-editenv`, `fw_printenv`
//! and `fw_setenv`): running the tool, parsing its listing, mapping names to [`BootVars`].

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::{self, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use super::{BootError, BootVars, Slot};

/// The variable names one backend uses for the four values.
#[derive(Debug, Clone, Copy)]
pub(crate) struct VarNames {
    pub default: &'static str,
    pub try_slot: &'static str,
    pub tries_left: &'static str,
    pub booted: &'static str,
}

impl VarNames {
    /// Reads the values from `name=value` pairs. A missing default means slot A, as in the
    /// boot scripts; missing try/booted mean none; a missing count means 0.
    pub(crate) fn parse(&self, vars: &BTreeMap<String, String>) -> Result<BootVars, BootError> {
        let slot = |name: &str| -> Result<Option<Slot>, BootError> {
            match vars.get(name).map(String::as_str) {
                None | Some("") => Ok(None),
                Some(value) => value.parse().map(Some).map_err(|_| BootError::InvalidVar {
                    name: name.into(),
                    value: value.into(),
                }),
            }
        };
        let tries_left = match vars.get(self.tries_left).map(String::as_str) {
            None | Some("") => 0,
            Some(value) => value.parse().map_err(|_| BootError::InvalidVar {
                name: self.tries_left.into(),
                value: value.into(),
            })?,
        };
        Ok(BootVars {
            default: slot(self.default)?.unwrap_or(Slot::A),
            try_slot: slot(self.try_slot)?,
            tries_left,
            booted: slot(self.booted)?,
        })
    }

    /// The values as `name=value` assignments; an empty value clears the variable.
    pub(crate) fn assignments(&self, vars: &BootVars) -> Vec<String> {
        let opt = |s: Option<Slot>| s.map(Slot::as_str).unwrap_or("");
        vec![
            format!("{}={}", self.default, vars.default),
            format!("{}={}", self.try_slot, opt(vars.try_slot)),
            format!("{}={}", self.tries_left, vars.tries_left),
            format!("{}={}", self.booted, opt(vars.booted)),
        ]
    }
}

/// Parses `name=value` lines as printed by `grub-editenv list` and `fw_printenv`: values
/// may contain `=`; lines without `=` or with an empty or space-containing name (warnings,
/// headers) are skipped.
pub(crate) fn parse_listing(output: &str) -> BTreeMap<String, String> {
    output
        .lines()
        .filter_map(|line| {
            let line = line.strip_suffix('\r').unwrap_or(line);
            let (name, value) = line.split_once('=')?;
            if name.is_empty() || name.contains(char::is_whitespace) {
                return None;
            }
            Some((name.to_string(), value.to_string()))
        })
        .collect()
}

/// Runs a bootloader tool, feeding `stdin`, and returns its stdout. A missing tool is a
/// [`BootError::ToolMissing`] naming the package to install.
pub(crate) fn run_tool(
    tool: &Path,
    package: &'static str,
    args: &[OsString],
    stdin: Option<&[u8]>,
) -> Result<String, BootError> {
    let mut command = Command::new(tool);
    command
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().map_err(|source| {
        if source.kind() == io::ErrorKind::NotFound {
            BootError::ToolMissing {
                tool: tool.to_path_buf(),
                package,
            }
        } else {
            BootError::ToolSpawn {
                tool: tool.to_path_buf(),
                source,
            }
        }
    })?;
    let spawn_err = |source| BootError::ToolSpawn {
        tool: tool.to_path_buf(),
        source,
    };
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // The inputs are a few short lines: far below the pipe buffer, so writing before
        // reading stdout cannot deadlock.
        pipe.write_all(input).map_err(spawn_err)?;
    }
    let output = child.wait_with_output().map_err(spawn_err)?;
    if !output.status.success() {
        return Err(BootError::ToolFailed {
            tool: tool.to_path_buf(),
            args: args
                .iter()
                .map(|a| a.to_string_lossy())
                .collect::<Vec<_>>()
                .join(" "),
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_listing_is_robust() {
        let out = "# header\nota_default=B\r\nweird line\n=novalue\nbad name=x\nx=a=b c\n\n";
        let map = parse_listing(out);
        assert_eq!(map.get("ota_default").unwrap(), "B");
        assert_eq!(map.get("x").unwrap(), "a=b c");
        assert_eq!(map.len(), 2);
    }

    #[test]
    fn var_names_parse_and_reject_garbage() {
        let names = VarNames {
            default: "d",
            try_slot: "t",
            tries_left: "n",
            booted: "b",
        };
        let empty = BTreeMap::new();
        assert_eq!(
            names.parse(&empty).unwrap(),
            BootVars {
                default: Slot::A,
                try_slot: None,
                tries_left: 0,
                booted: None
            }
        );
        let vars = BootVars {
            default: Slot::B,
            try_slot: Some(Slot::A),
            tries_left: 3,
            booted: Some(Slot::A),
        };
        let text = names.assignments(&vars).join("\n");
        assert_eq!(names.parse(&parse_listing(&text)).unwrap(), vars);

        for (name, value) in [("d", "C"), ("t", "x"), ("n", "-1"), ("n", "two")] {
            let map = BTreeMap::from([(name.to_string(), value.to_string())]);
            let err = names.parse(&map).unwrap_err();
            assert!(
                matches!(&err, BootError::InvalidVar { name: n, .. } if n == name),
                "{err:?}"
            );
        }
    }

    #[test]
    fn missing_tool_names_the_package() {
        let err = run_tool(Path::new("/nonexistent/tool"), "some-package", &[], None).unwrap_err();
        assert!(
            err.to_string().contains("apt-get install some-package"),
            "{err}"
        );
    }

    #[test]
    fn failing_tool_reports_stderr() {
        let err = run_tool(
            Path::new("sh"),
            "dash",
            &["-c".into(), "echo oops >&2; exit 3".into()],
            None,
        )
        .unwrap_err();
        assert!(
            matches!(&err, BootError::ToolFailed { stderr, .. } if stderr == "oops"),
            "{err:?}"
        );
    }
}
