//! `merbridge bench`: direct vs iptables vs merbridge on the test bed, data path and control
//! plane, in one run on one machine.
//!
//! - [`env`]: one environment per (topology, setup), built once, measured round after round.
//! - [`control`]: the time to add the N-th pod, merbridge's maps vs iptables.
//! - [`report`]: terminal table with ratios, JSON, SVG.
//!
//! Rounds are interleaved (every environment once per round, the order rotated each round)
//! and every figure is the median over rounds: this machine is shared and noisy.

pub mod control;
pub mod env;
pub mod report;
pub mod stats;

use env::{Counts, Env, Pinning, RoundResult, Setup, Topology};
use mb_testbed::scenarios::Binaries;
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
            for s in [Setup::Direct, Setup::Iptables, Setup::Merbridge] {
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
    /// Median over rounds of every figure measured at least once.
    pub fn medians(&self) -> BTreeMap<&'static str, f64> {
        let mut by_name: BTreeMap<&'static str, Vec<f64>> = BTreeMap::new();
        for r in &self.rounds {
            for (&k, &v) in &r.figures {
                by_name.entry(k).or_default().push(v);
            }
        }
        by_name
            .into_iter()
            .filter_map(|(k, v)| stats::median(&v).map(|m| (k, m)))
            .collect()
    }

    /// Every RR round trip of all rounds, sorted (ns).
    pub fn all_rr_samples(&self) -> Vec<u64> {
        let mut all: Vec<u64> = self
            .rounds
            .iter()
            .flat_map(|r| r.rr_samples.iter().copied())
            .collect();
        all.sort_unstable();
        all
    }

    pub fn errors(&self) -> Vec<String> {
        let mut e: Vec<String> = self.build_error.iter().cloned().collect();
        for (i, r) in self.rounds.iter().enumerate() {
            e.extend(r.errors.iter().map(|x| format!("round {}: {x}", i + 1)));
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
}

/// Runs the whole plan; `progress` gets one line per step.
pub fn run(plan: &Plan, bins: &Binaries, progress: &dyn Fn(&str)) -> Results {
    let started = Instant::now();
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
            result.rounds.push(measured);
        }
    }
    drop(
        envs.iter_mut()
            .map(|(e, _)| e.take())
            .collect::<Vec<Option<Env>>>(),
    );
    let control = control::run(plan.control_plane_pods, &|what| {
        progress(&format!("control plane: {what}"))
    });
    Results {
        plan: plan.clone(),
        envs: envs.into_iter().map(|(_, r)| r).collect(),
        control,
        elapsed_s: started.elapsed().as_secs_f64(),
    }
}
