//! `merbridge probe [--json]`: what this kernel supports, which merbridge feature needs each
//! item, and a verdict (full, reduced, cannot run). Works without root too: it then says what
//! root would let it check.
use clap::Args;
use mb_loader::probe::{probe_all, verdict, Need, Probed, Support, Verdict};
use mb_loader::splice_hazard::{probe_splice_hazard, SpliceHazard};
use std::process::ExitCode;

#[derive(Args)]
pub struct ProbeArgs {
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: ProbeArgs) -> Result<ExitCode, String> {
    let probes = probe_all();
    let report = Report {
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "unknown".into()),
        root: mb_sys::testing::is_root(),
        probes,
        verdict: verdict(probes),
        // Needs root (a sockhash and a private netns); unprivileged it stays unknown.
        splice: if mb_sys::testing::is_root() {
            probe_splice_hazard()
        } else {
            SpliceHazard::Unknown("needs root (a sockhash and a private network namespace)".into())
        },
    };
    let text = if args.json {
        report.json()
    } else {
        report.table()
    };
    // A closed pipe (`merbridge probe | head`) is not an error worth a panic.
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    match writeln!(stdout, "{text}") {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
        Err(e) => return Err(format!("probe: writing the report: {e}")),
    }
    Ok(match report.verdict {
        Verdict::CannotRun(_) => ExitCode::FAILURE,
        _ => ExitCode::SUCCESS,
    })
}

struct Report<'a> {
    kernel: String,
    root: bool,
    probes: &'a [Probed],
    verdict: Verdict,
    splice: SpliceHazard,
}

fn status(s: &Support) -> &'static str {
    match s {
        Support::Yes => "yes",
        Support::No(_) => "no",
        Support::Unknown(_) => "unknown",
    }
}

fn reason(s: &Support) -> Option<&str> {
    match s {
        Support::Yes => None,
        Support::No(r) | Support::Unknown(r) => Some(r),
    }
}

/// "5.15 (measured: …)" → (5, 15), for picking the kernel to upgrade to.
fn version_of(first_kernel: &str) -> (u32, u32) {
    let mut it = first_kernel
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok());
    (it.next().unwrap_or(0), it.next().unwrap_or(0))
}

impl Report<'_> {
    fn verdict_word(&self) -> &'static str {
        match self.verdict {
            Verdict::Full => "full",
            Verdict::Reduced(_) => "reduced",
            Verdict::CannotRun(_) => "cannot-run",
            Verdict::Unknown(_) => "unknown",
        }
    }

    /// The newest "first kernel" among the required items that are missing.
    fn upgrade_to(&self) -> Option<&'static str> {
        self.probes
            .iter()
            .filter(|p| p.need == Need::Required && matches!(p.support, Support::No(_)))
            .max_by_key(|p| version_of(p.first_kernel))
            .map(|p| p.first_kernel)
    }

    fn verdict_text(&self) -> String {
        match &self.verdict {
            Verdict::Full => "every merbridge feature works on this kernel".into(),
            Verdict::Reduced(off) => format!(
                "merbridge runs; these are off or use a fallback:\n{}",
                off.iter()
                    .map(|l| format!("  - {l}"))
                    .collect::<Vec<_>>()
                    .join("\n")
            ),
            Verdict::CannotRun(missing) => format!(
                "this kernel lacks what merbridge needs:\n{}\nupgrade to Linux {} \
                 or newer (or a distribution kernel with these backported)",
                missing
                    .iter()
                    .map(|l| format!("  - {l}"))
                    .collect::<Vec<_>>()
                    .join("\n"),
                self.upgrade_to().unwrap_or("a newer kernel")
            ),
            Verdict::Unknown(items) => {
                let mut s = format!(
                    "{} items could not be probed without privileges",
                    items.len()
                );
                if !self.root {
                    s.push_str(
                        "; run as root (or with CAP_BPF and CAP_NET_ADMIN) to check program \
                         types, helpers, map types and bpf_link — e.g. `sudo merbridge probe`",
                    );
                }
                s
            }
        }
    }

    /// The splice hazard's status word, its detail, and what `load --splice auto` picks.
    fn splice_hazard(&self) -> (&'static str, Option<&str>, &'static str) {
        match &self.splice {
            SpliceHazard::Absent => ("absent", None, "all"),
            SpliceHazard::Present(d) => ("present", Some(d), "sidecars"),
            SpliceHazard::Unknown(d) => ("unknown", Some(d), "sidecars"),
        }
    }

    fn table(&self) -> String {
        let mut out = format!(
            "merbridge probe: Linux {}, {}\n\n",
            self.kernel,
            if self.root {
                "running as root"
            } else {
                "running unprivileged (root would unlock the items marked unknown)"
            }
        );
        let name_w = self.probes.iter().map(|p| p.name.len()).max().unwrap_or(4);
        let first_w = self
            .probes
            .iter()
            .map(|p| p.first_kernel.len())
            .max()
            .unwrap_or(5)
            .max(8);
        out.push_str(&format!(
            "{:name_w$}  {:7}  {:first_w$}  NEEDED FOR\n",
            "ITEM", "STATUS", "FIRST IN"
        ));
        for p in self.probes {
            let need = match p.need {
                Need::Required => "required",
                Need::Optional => "optional",
            };
            out.push_str(&format!(
                "{:name_w$}  {:7}  {:first_w$}  {} [{need}]\n",
                p.name,
                status(&p.support),
                p.first_kernel,
                p.needed_for
            ));
            if let Some(r) = reason(&p.support) {
                out.push_str(&format!("{:name_w$}    why: {r}\n", ""));
            }
        }
        let (hazard, detail, auto) = self.splice_hazard();
        out.push_str(&format!(
            "\nsplice hazard (blocking recv() on a spliced socket gets a spurious EAGAIN): \
             {hazard}\n"
        ));
        if let Some(d) = detail {
            out.push_str(&format!("  why: {d}\n"));
        }
        out.push_str(&format!(
            "  `merbridge load` (--splice auto) splices: {auto}{}\n",
            if auto == "all" {
                ""
            } else {
                " (application legs stay on the loopback TCP path; sidecars must be event-driven)"
            }
        ));
        out.push_str(&format!(
            "\nverdict: {} — {}",
            self.verdict_word(),
            self.verdict_text()
        ));
        out
    }

    fn json(&self) -> String {
        let items: Vec<serde_json::Value> = self
            .probes
            .iter()
            .map(|p| {
                serde_json::json!({
                    "name": p.name,
                    "status": status(&p.support),
                    "reason": reason(&p.support),
                    "first_kernel": p.first_kernel,
                    "needed_for": p.needed_for,
                    "required": p.need == Need::Required,
                })
            })
            .collect();
        let details: Vec<String> = match &self.verdict {
            Verdict::Full => Vec::new(),
            Verdict::Reduced(v) | Verdict::CannotRun(v) | Verdict::Unknown(v) => v.clone(),
        };
        serde_json::to_string_pretty(&serde_json::json!({
            "kernel": self.kernel,
            "root": self.root,
            "verdict": self.verdict_word(),
            "verdict_text": self.verdict_text(),
            "verdict_details": details,
            "upgrade_to": self.upgrade_to(),
            "items": items,
            "splice_hazard": {
                "status": self.splice_hazard().0,
                "detail": self.splice_hazard().1,
                "auto_splice": self.splice_hazard().2,
            },
        }))
        .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_from_first_kernel_texts() {
        assert_eq!(version_of("5.15 (measured: on 6.1, not on 5.10)"), (5, 15));
        assert_eq!(version_of("4.17"), (4, 17));
        assert_eq!(version_of("?"), (0, 0));
    }
}
