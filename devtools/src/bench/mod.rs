//! `merbridge bench`: direct vs iptables vs merbridge on the test bed, data path and control
//! plane, in one run on one machine.
//!
//! - [`env`]: one environment per (topology, setup), built once, measured round after round.
//! - [`setup`]: a setup's nodes, pods, interception and sidecars (shared with the demo), and
//!   the per-round check that it intercepted; a setup that did not is failed, not reported.
//! - [`control`]: adding pods: per pod (Istio's init-container restore vs merbridge's agent)
//!   and per node (a node-wide iptables table vs the agent, as N grows).
//! - [`report`]: terminal table with ratios, JSON, SVG.
//!
//! Rounds are interleaved (every environment once per round, the order rotated each round)
//! and every figure is the median over rounds: this machine is shared and noisy.

pub mod control;
pub mod env;
pub mod faults;
pub mod report;
pub mod setup;
pub mod stats;

use env::{Counts, Env, Pinning, RoundResult, Setup, Topology};
use mb_testbed::scenarios::Binaries;
use mb_testbed::sidecar::SidecarKind;
use std::collections::BTreeMap;
use std::time::Instant;

/// What to run.
#[derive(Clone, Debug)]
pub struct Plan {
    pub quick: bool,
    pub rounds: usize,
    pub counts: Counts,
    pub topologies: Vec<Topology>,
    /// Setups per topology (the first three always; extras where they apply).
    pub setups: Vec<(Topology, Setup)>,
    pub pinning: Pinning,
    /// Fake pods in the maps for [`Setup::MerbridgeManyPods`].
    pub many_pods: u32,
    /// Largest N of the control-plane measurement.
    pub control_plane_pods: u32,
    /// The proxy every meshed pod runs (`--sidecar`).
    pub sidecar: SidecarKind,
}

impl Plan {
    /// The default plan; `topologies` empty = all; `pods` overrides the control plane's N
    /// and the many-pods setup's pod count.
    pub fn new(
        quick: bool,
        rounds: Option<usize>,
        splice_all: bool,
        splice_none: bool,
        pinning: Pinning,
        topologies: &[Topology],
        pods: Option<u32>,
    ) -> Plan {
        let counts = if quick {
            Counts {
                rr: 2_000,
                rr_warmup: 200,
                rr_parallel: 4_000,
                crr: 300,
                bulk_bytes: 16 << 20,
            }
        } else {
            // Many short rounds rather than few long ones: on a shared machine load comes in
            // bursts, and a median over more rounds shrugs them off better.
            Counts {
                rr: 10_000,
                rr_warmup: 1_000,
                rr_parallel: 20_000,
                crr: 2_000,
                bulk_bytes: 128 << 20,
            }
        };
        let topologies: Vec<Topology> = Topology::ALL
            .into_iter()
            .filter(|t| topologies.is_empty() || topologies.contains(t))
            .collect();
        let mut setups = Vec::new();
        for &t in &topologies {
            for s in [
                Setup::Direct,
                Setup::ExplicitProxy,
                Setup::Iptables,
                Setup::Merbridge,
            ] {
                setups.push((t, s));
            }
            if splice_all && t != Topology::CrossNode {
                setups.push((t, Setup::MerbridgeSpliceAll));
            }
            if splice_none {
                setups.push((t, Setup::MerbridgeSpliceNone));
            }
            if t == Topology::SameNode {
                setups.push((t, Setup::MerbridgeManyPods));
                setups.push((t, Setup::MerbridgeBlockingApps));
            }
        }
        Plan {
            quick,
            rounds: rounds.unwrap_or(if quick { 1 } else { 9 }).max(1),
            counts,
            topologies,
            setups,
            pinning,
            many_pods: pods.unwrap_or(if quick { 1_000 } else { 10_000 }),
            control_plane_pods: pods.unwrap_or(if quick { 1_000 } else { 10_000 }),
            sidecar: SidecarKind::Reference,
        }
    }
}

/// All rounds of one environment.
#[derive(Clone, Debug)]
pub struct EnvResult {
    pub topology: Topology,
    pub setup: Setup,
    pub rounds: Vec<RoundResult>,
    /// Building the environment failed: no rounds.
    pub build_error: Option<String>,
}

impl EnvResult {
    /// Why this setup's figures cannot be reported: it was not built, or a round was not
    /// intercepted (then it measured something else, usually direct traffic).
    pub fn failure(&self) -> Option<String> {
        if let Some(e) = &self.build_error {
            return Some(format!("not built: {e}"));
        }
        self.rounds.iter().enumerate().find_map(|(i, r)| {
            r.interception
                .as_ref()
                .err()
                .map(|e| format!("round {}: {e}", i + 1))
        })
    }

    /// The rounds whose figures count: none once the setup failed.
    pub fn counted_rounds(&self) -> &[RoundResult] {
        if self.failure().is_some() {
            &[]
        } else {
            &self.rounds
        }
    }

    /// Median over rounds of every figure measured at least once (none for a failed setup).
    pub fn medians(&self) -> BTreeMap<&'static str, f64> {
        let mut by_name: BTreeMap<&'static str, Vec<f64>> = BTreeMap::new();
        for r in self.counted_rounds() {
            for (&k, &v) in &r.figures {
                by_name.entry(k).or_default().push(v);
            }
        }
        by_name
            .into_iter()
            .filter_map(|(k, v)| stats::median(&v).map(|m| (k, m)))
            .collect()
    }

    /// Every RR round trip of all counted rounds, sorted (ns).
    pub fn all_rr_samples(&self) -> Vec<u64> {
        let mut all: Vec<u64> = self
            .counted_rounds()
            .iter()
            .flat_map(|r| r.rr_samples.iter().copied())
            .collect();
        all.sort_unstable();
        all
    }

    /// The measures that failed, round by round.
    pub fn measure_errors(&self) -> Vec<String> {
        let mut e = Vec::new();
        for (i, r) in self.rounds.iter().enumerate() {
            e.extend(r.errors.iter().map(|x| format!("round {}: {x}", i + 1)));
        }
        e
    }

    /// Everything that went wrong: the build, measures, interception checks.
    pub fn errors(&self) -> Vec<String> {
        let mut e: Vec<String> = self.build_error.iter().cloned().collect();
        for (i, r) in self.rounds.iter().enumerate() {
            e.extend(r.errors.iter().map(|x| format!("round {}: {x}", i + 1)));
            if let Err(x) = &r.interception {
                e.push(format!("round {}: interception: {x}", i + 1));
            }
        }
        e
    }
}

/// Everything one run measured.
#[derive(Clone, Debug)]
pub struct Results {
    pub plan: Plan,
    pub envs: Vec<EnvResult>,
    pub control: control::ControlPlane,
    pub elapsed_s: f64,
}

impl Results {
    pub fn get(&self, t: Topology, s: Setup) -> Option<&EnvResult> {
        self.envs.iter().find(|e| e.topology == t && e.setup == s)
    }

    /// One line per problem of the run: failed setups, failed measures, control-plane
    /// errors. The bench exits non-zero unless this is empty.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        for e in &self.envs {
            let name = format!("{} / {}", e.topology.name(), e.setup.name());
            if let Some(f) = e.failure() {
                out.push(format!("{name} FAILED: {f}"));
            } else {
                out.extend(e.errors().into_iter().map(|x| format!("{name}: {x}")));
            }
        }
        out.extend(
            self.control
                .errors
                .iter()
                .map(|e| format!("control plane: {e}")),
        );
        out
    }
}

/// Runs the whole plan; `progress` gets one line per step.
pub fn run(plan: &Plan, bins: &Binaries, progress: &dyn Fn(&str)) -> Results {
    let started = Instant::now();
    let bins = &bins.clone().with_sidecar(plan.sidecar);
    let mut envs: Vec<(Option<Env>, EnvResult)> = Vec::new();
    for &(t, s) in &plan.setups {
        progress(&format!("build {} / {}", t.name(), s.name()));
        let built = Env::build(t, s, bins, plan.pinning, plan.many_pods);
        let (env, err) = match built {
            Ok(e) => (Some(e), None),
            Err(e) => {
                progress(&format!("  failed: {e}"));
                (None, Some(e))
            }
        };
        envs.push((
            env,
            EnvResult {
                topology: t,
                setup: s,
                rounds: Vec::new(),
                build_error: err,
            },
        ));
    }
    let total = plan.rounds * envs.len();
    let mut step = 0;
    for round in 0..plan.rounds {
        // Rotate the order each round so no setup always runs first or last.
        let n = envs.len();
        for k in 0..n {
            let i = (k + round) % n;
            let (env, result) = &mut envs[i];
            step += 1;
            let Some(env) = env else { continue };
            let label = format!(
                "[{step:>3}/{total}] round {}/{} {} / {}",
                round + 1,
                plan.rounds,
                env.topology.name(),
                env.setup.name()
            );
            let measured = env.measure(&plan.counts, &|what| progress(&format!("{label}: {what}")));
            for e in &measured.errors {
                progress(&format!("{label}: FAILED {e}"));
            }
            match &measured.interception {
                Ok(seen) => progress(&format!("{label}: checked: {seen}")),
                Err(e) => progress(&format!("{label}: FAILED the interception check: {e}")),
            }
            result.rounds.push(measured);
        }
    }
    drop(
        envs.iter_mut()
            .map(|(e, _)| e.take())
            .collect::<Vec<Option<Env>>>(),
    );
    let control = control::run(plan.control_plane_pods, &bins.workload, &|what| {
        progress(&format!("control plane: {what}"))
    });
    Results {
        plan: plan.clone(),
        envs: envs.into_iter().map(|(_, r)| r).collect(),
        control,
        elapsed_s: started.elapsed().as_secs_f64(),
    }
}
