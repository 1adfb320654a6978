//! Mesh detection and interception policy against the real injector output and the one live
//! pod in `../shared/fixtures/k8s/`. Where a fixture lacks status or nodeName the test adds
//! them (synthetic) and says so.

mod k8s_support;

use k8s_support::{fixture_pod, fixture_pod_value, fixtures_dir, synthesize_running};
use mb_agent::k8s::PodInfo;
use mb_agent::mesh::{
    annotations_from_file, intercepted, is_meshed, CidrSelection, Mesh, PodPolicy, PortSelection,
};
use std::collections::BTreeMap;
use std::net::IpAddr;

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

fn annotations(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// (fixture, mesh it belongs to or None, native sidecar)
const DETECTION: &[(&str, Option<Mesh>, bool)] = &[
    (
        "istio/istio-1.26.0__pod.yaml.injected",
        Some(Mesh::Istio),
        false,
    ),
    (
        "istio/istio-1.26.0__traffic-annotations.yaml.injected",
        Some(Mesh::Istio),
        false,
    ),
    (
        "istio/istio-1.26.0__hello.yaml.cni.injected",
        Some(Mesh::Istio),
        false,
    ),
    (
        "istio/istio-master__pod.yaml.injected",
        Some(Mesh::Istio),
        true,
    ),
    (
        "istio/istio-master__native-sidecar.yaml.injected",
        Some(Mesh::Istio),
        true,
    ),
    (
        "istio/istio-master__hello-tproxy.yaml.injected",
        Some(Mesh::Istio),
        true,
    ),
    (
        "istio/istio-master__proxy-override-runas.yaml.cni.injected",
        Some(Mesh::Istio),
        true,
    ),
    (
        "istio/istio-master__status_annotations.yaml.injected",
        Some(Mesh::Istio),
        true,
    ),
    (
        "istio/istio-master__traffic-annotations-empty-includes.yaml.injected",
        Some(Mesh::Istio),
        true,
    ),
    (
        "istio/istio-master__traffic-annotations-wildcards.yaml.injected",
        Some(Mesh::Istio),
        true,
    ),
    (
        "istio/istio-master__hello-ignore.yaml.injected",
        None,
        false,
    ),
    (
        "linkerd/linkerd-2.19__inject_emojivoto_pod.golden.yml",
        Some(Mesh::Linkerd),
        false,
    ),
    (
        "linkerd/linkerd-2.19__inject_emojivoto_pod_proxyignores.golden.yml",
        Some(Mesh::Linkerd),
        false,
    ),
    (
        "linkerd/linkerd-2.19__inject_emojivoto_deployment_config_overrides.golden.yml",
        Some(Mesh::Linkerd),
        false,
    ),
    (
        "linkerd/linkerd-2.19__inject_emojivoto_deployment_no_init_container.golden.yml",
        Some(Mesh::Linkerd),
        false,
    ),
    (
        "linkerd/linkerd-main__inject_emojivoto_pod.golden.yml",
        Some(Mesh::Linkerd),
        true,
    ),
    (
        "linkerd/linkerd-main__inject_emojivoto_deployment_no_init_container.golden.yml",
        Some(Mesh::Linkerd),
        true,
    ),
    (
        "linkerd/live__cloudtestdrive-stockmanager-pod.yaml",
        Some(Mesh::Linkerd),
        false,
    ),
    (
        "kuma/kuma-2.12.3__inject.01.golden.yaml",
        Some(Mesh::Kuma),
        false,
    ),
    (
        "kuma/kuma-2.12.3__inject.16.golden.yaml",
        Some(Mesh::Kuma),
        false,
    ),
    (
        "kuma/kuma-2.12.3__inject.34.golden.yaml",
        Some(Mesh::Kuma),
        false,
    ),
    (
        "kuma/kuma-2.12.3__inject.38.golden.yaml",
        Some(Mesh::Kuma),
        false,
    ),
    (
        "kuma/kuma-master__inject.16.golden.yaml",
        Some(Mesh::Kuma),
        true,
    ),
    (
        "kuma/kuma-master__inject.39.golden.yaml",
        Some(Mesh::Kuma),
        true,
    ),
    ("kuma/kuma-master__skip_inject.1.golden.yaml", None, false),
];

#[test]
fn every_fixture_is_detected_as_its_mesh_only() {
    assert!(fixtures_dir().join("istio").is_dir());
    for &(file, expected, native) in DETECTION {
        let pod = fixture_pod(file);
        for mesh in Mesh::ALL {
            let got = is_meshed(&pod, mesh);
            if Some(mesh) == expected {
                let meshed = got.unwrap_or_else(|| panic!("{file}: not detected as {mesh}"));
                assert_eq!(meshed.native_sidecar, native, "{file}: native sidecar");
            } else {
                assert!(got.is_none(), "{file}: wrongly detected as {mesh}");
            }
        }
    }
}

#[test]
fn host_network_gateway_and_opt_out_pods_are_not_meshed() {
    let base = fixture_pod_value("istio/istio-master__pod.yaml.injected");
    let mut host = base.clone();
    host["spec"]["hostNetwork"] = true.into();
    assert!(is_meshed(&PodInfo::from_value(&host).unwrap(), Mesh::Istio).is_none());

    let mut opt_out = base.clone();
    opt_out["metadata"]["labels"]["sidecar.istio.io/inject"] = "false".into();
    assert!(is_meshed(&PodInfo::from_value(&opt_out).unwrap(), Mesh::Istio).is_none());

    // A gateway runs `proxy router`, not `proxy sidecar`.
    let mut gateway = base.clone();
    let inits = gateway["spec"]["initContainers"].as_array_mut().unwrap();
    let proxy = inits
        .iter_mut()
        .find(|c| c["name"] == "istio-proxy")
        .unwrap();
    proxy["args"] = serde_json::json!(["proxy", "router"]);
    assert!(is_meshed(&PodInfo::from_value(&gateway).unwrap(), Mesh::Istio).is_none());

    // The proxy as a plain (run-to-completion) init container is not a sidecar.
    let mut plain_init = base;
    let inits = plain_init["spec"]["initContainers"].as_array_mut().unwrap();
    let proxy = inits
        .iter_mut()
        .find(|c| c["name"] == "istio-proxy")
        .unwrap();
    proxy.as_object_mut().unwrap().remove("restartPolicy");
    assert!(is_meshed(&PodInfo::from_value(&plain_init).unwrap(), Mesh::Istio).is_none());
}

#[test]
fn intercepted_needs_an_ip_and_a_live_phase() {
    // SYNTHETIC: the injector output has no status; the test adds IPs and a phase.
    let value = fixture_pod_value("istio/istio-master__pod.yaml.injected");
    let no_ip = PodInfo::from_value(&value).unwrap();
    assert!(is_meshed(&no_ip, Mesh::Istio).is_some());
    assert!(intercepted(&no_ip, Mesh::Istio).is_none(), "no IP yet");
    let running = synthesize_running(value, "u1", "node-a", &["10.0.0.7", "fd00::7"], "1");
    let pod = PodInfo::from_value(&running).unwrap();
    let decision = intercepted(&pod, Mesh::Istio).expect("running meshed pod");
    assert_eq!(decision.policy.proxy_uid, 1337);
    assert!(decision.warnings.is_empty(), "{:?}", decision.warnings);
    let mut done = running_pod_with_phase(&pod, "Succeeded");
    assert!(intercepted(&done, Mesh::Istio).is_none());
    done.phase = "Failed".into();
    assert!(intercepted(&done, Mesh::Istio).is_none());
    // The live Linkerd pod has a real podIP and phase.
    let live = fixture_pod("linkerd/live__cloudtestdrive-stockmanager-pod.yaml");
    assert_eq!(live.pod_ips, vec![ip("10.244.0.72")]);
    assert_eq!(live.node_name, "10.0.10.3");
    let decision = intercepted(&live, Mesh::Linkerd).expect("live linkerd pod");
    assert_eq!(decision.policy.proxy_uid, 2102);
}

fn running_pod_with_phase(pod: &PodInfo, phase: &str) -> PodInfo {
    let mut pod = pod.clone();
    pod.phase = phase.into();
    pod
}

#[test]
fn istio_traffic_annotations_from_the_injector_testdata() {
    let pod = fixture_pod("istio/istio-1.26.0__traffic-annotations.yaml.injected");
    let (policy, warnings) = PodPolicy::for_pod(Mesh::Istio, &pod);
    assert!(warnings.is_empty(), "{warnings:?}");
    // includeOutboundIPRanges 127.0.0.1/24,10.96.0.1/24 — host bits masked.
    match &policy.outbound_include_cidrs {
        CidrSelection::Only(list) => {
            let text: Vec<String> = list.iter().map(|c| c.to_string()).collect();
            assert_eq!(text, vec!["127.0.0.0/24", "10.96.0.0/24"]);
        }
        other => panic!("expected a list, got {other:?}"),
    }
    // excludeOutboundIPRanges 10.96.0.2/24,10.96.0.3/24: both are 10.96.0.0/24.
    assert_eq!(policy.outbound_exclude_cidrs.len(), 1);
    assert!(
        !policy.redirects_outbound(ip("10.96.0.9"), 80),
        "exclude wins"
    );
    assert!(policy.redirects_outbound(ip("127.0.0.9"), 80));
    assert!(
        !policy.redirects_outbound(ip("8.8.8.8"), 80),
        "not in the include list"
    );
    assert!(
        !policy.redirects_outbound(ip("127.0.0.9"), 8),
        "excludeOutboundPorts 7,8,9"
    );
    // includeInboundPorts 1,2,3; excludeInboundPorts 4,5,6.
    assert!(policy.redirects_inbound(None, 2));
    assert!(!policy.redirects_inbound(None, 4));
    assert!(
        !policy.redirects_inbound(None, 80),
        "not in includeInboundPorts"
    );
    assert_eq!(policy.status_port, Some(15020));
}

#[test]
fn istio_wildcards_empty_includes_status_port_and_uid() {
    let wild = fixture_pod("istio/istio-master__traffic-annotations-wildcards.yaml.injected");
    let (policy, warnings) = PodPolicy::for_pod(Mesh::Istio, &wild);
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(policy.outbound_include_cidrs, CidrSelection::All);
    assert_eq!(policy.inbound_include_ports, PortSelection::All);
    assert!(policy.redirects_outbound(ip("93.184.216.34"), 443));
    assert!(policy.redirects_inbound(None, 8080));
    for own in [15000, 15001, 15006, 15008, 15020, 15021, 15090] {
        assert!(!policy.redirects_inbound(None, own), "own port {own}");
    }

    let empty = fixture_pod("istio/istio-master__traffic-annotations-empty-includes.yaml.injected");
    let (policy, _) = PodPolicy::for_pod(Mesh::Istio, &empty);
    assert!(
        !policy.redirects_outbound(ip("10.1.1.1"), 80),
        "empty include = nothing"
    );
    assert!(!policy.redirects_inbound(None, 8080));

    let status = fixture_pod("istio/istio-master__status_annotations.yaml.injected");
    let (policy, _) = PodPolicy::for_pod(Mesh::Istio, &status);
    assert_eq!(policy.status_port, Some(123));
    assert!(!policy.redirects_inbound(None, 123));
    assert!(policy.redirects_inbound(None, 124));

    let runas = fixture_pod("istio/istio-master__proxy-override-runas.yaml.cni.injected");
    assert_eq!(PodPolicy::for_pod(Mesh::Istio, &runas).0.proxy_uid, 1234);
    // TPROXY: istio-proxy runs as root, but the exempt UID is still 1337 (istio-init -u).
    let tproxy = fixture_pod("istio/istio-master__hello-tproxy.yaml.injected");
    assert_eq!(PodPolicy::for_pod(Mesh::Istio, &tproxy).0.proxy_uid, 1337);
}

/// The proxy GID: istio-init's `-g` first, else the proxy container's `runAsGroup` (never
/// group 0), else none (the entry then falls back to the UID for Istio); no GID for the
/// meshes without that rule.
#[test]
fn proxy_gid_from_init_args_or_run_as_group() {
    use mb_agent::pods::compile;
    // The TPROXY fixture's istio-proxy runs as uid 0, gid 1337 (its init has no -g).
    let tproxy = fixture_pod("istio/istio-master__hello-tproxy.yaml.injected");
    let proxy = tproxy.container("istio-proxy").expect("istio-proxy");
    assert_eq!(
        (proxy.run_as_user, proxy.run_as_group),
        (Some(0), Some(1337))
    );
    assert_eq!(
        PodPolicy::for_pod(Mesh::Istio, &tproxy).0.proxy_gid,
        Some(1337)
    );

    let mut value = fixture_pod_value("istio/istio-1.26.0__traffic-annotations.yaml.injected");
    let set_group = |value: &mut serde_json::Value, gid: u32| {
        for c in value["spec"]["containers"].as_array_mut().unwrap() {
            if c["name"] == "istio-proxy" {
                c["securityContext"]["runAsGroup"] = gid.into();
            }
        }
    };
    set_group(&mut value, 4242);
    let pod = PodInfo::from_value(&value).unwrap();
    let (policy, _) = PodPolicy::for_pod(Mesh::Istio, &pod);
    assert_eq!(policy.proxy_gid, Some(4242));
    assert_eq!(compile(1, &policy, false).proxy_gid, 4242);
    set_group(&mut value, 0);
    let pod = PodInfo::from_value(&value).unwrap();
    let (policy, _) = PodPolicy::for_pod(Mesh::Istio, &pod);
    assert_eq!(policy.proxy_gid, None, "group 0 is never the sidecar's");
    assert_eq!(
        compile(1, &policy, false).proxy_gid,
        policy.proxy_uid,
        "falls back to the UID"
    );

    // istio-init's -g wins over runAsGroup.
    set_group(&mut value, 4242);
    for c in value["spec"]["initContainers"].as_array_mut().unwrap() {
        if c["name"] == "istio-init" {
            let args = c["args"].as_array_mut().unwrap();
            args.push("-g".into());
            args.push("5151".into());
        }
    }
    let pod = PodInfo::from_value(&value).unwrap();
    assert_eq!(
        PodPolicy::for_pod(Mesh::Istio, &pod).0.proxy_gid,
        Some(5151)
    );
}

#[test]
fn istio_semantics_of_absent_star_empty_and_mixed_families() {
    let (absent, _) = PodPolicy::from_annotations(Mesh::Istio, &BTreeMap::new());
    assert_eq!(absent.outbound_include_cidrs, CidrSelection::All);
    assert_eq!(absent.inbound_include_ports, PortSelection::All);
    let (policy, warnings) = PodPolicy::from_annotations(
        Mesh::Istio,
        &annotations(&[
            (
                "traffic.sidecar.istio.io/includeOutboundIPRanges",
                "10.0.0.0/8,fd00::/8",
            ),
            (
                "traffic.sidecar.istio.io/excludeOutboundIPRanges",
                "10.1.0.0/16, fd00:1::/32",
            ),
            ("traffic.sidecar.istio.io/includeOutboundPorts", "5432"),
            ("traffic.sidecar.istio.io/includeInboundPorts", ""),
        ]),
    );
    assert!(warnings.is_empty(), "{warnings:?}");
    assert!(policy.redirects_outbound(ip("10.2.3.4"), 80));
    assert!(!policy.redirects_outbound(ip("10.1.3.4"), 80));
    assert!(policy.redirects_outbound(ip("fd00:2::1"), 80));
    assert!(!policy.redirects_outbound(ip("fd00:1::1"), 80));
    assert!(!policy.redirects_outbound(ip("192.168.1.1"), 80));
    assert!(
        policy.redirects_outbound(ip("192.168.1.1"), 5432),
        "includeOutboundPorts redirects whatever the destination"
    );
    assert!(
        !policy.redirects_inbound(None, 80),
        "empty include = nothing"
    );
    let (none, _) = PodPolicy::from_annotations(
        Mesh::Istio,
        &annotations(&[("sidecar.istio.io/interceptionMode", "NONE")]),
    );
    assert!(none.intercepts_nothing());
}

#[test]
fn malformed_elements_are_warnings_and_the_rest_applies() {
    let (policy, warnings) = PodPolicy::from_annotations(
        Mesh::Istio,
        &annotations(&[
            (
                "traffic.sidecar.istio.io/excludeOutboundPorts",
                "7, abc ,8,70000,-1,*",
            ),
            (
                "traffic.sidecar.istio.io/excludeOutboundIPRanges",
                "10.0.0.0/8,10.0.0.1,300.1.1.1/8,*",
            ),
            ("traffic.sidecar.istio.io/excludeInboundPorts", "9090"),
            ("status.sidecar.istio.io/port", "http"),
        ]),
    );
    let bad: Vec<(&str, &str)> = warnings
        .iter()
        .map(|w| (w.annotation.as_str(), w.element.as_str()))
        .collect();
    assert_eq!(
        bad,
        vec![
            (
                "traffic.sidecar.istio.io/excludeOutboundIPRanges",
                "10.0.0.1"
            ),
            (
                "traffic.sidecar.istio.io/excludeOutboundIPRanges",
                "300.1.1.1/8"
            ),
            ("traffic.sidecar.istio.io/excludeOutboundIPRanges", "*"),
            ("traffic.sidecar.istio.io/excludeOutboundPorts", "abc"),
            ("traffic.sidecar.istio.io/excludeOutboundPorts", "70000"),
            ("traffic.sidecar.istio.io/excludeOutboundPorts", "-1"),
            ("traffic.sidecar.istio.io/excludeOutboundPorts", "*"),
            ("status.sidecar.istio.io/port", "http"),
        ]
    );
    for w in &warnings {
        let text = w.to_string();
        assert!(
            text.contains(&w.annotation) && text.contains(&w.element),
            "{text}"
        );
    }
    assert!(!policy.redirects_outbound(ip("1.2.3.4"), 7));
    assert!(!policy.redirects_outbound(ip("1.2.3.4"), 8));
    assert!(policy.redirects_outbound(ip("1.2.3.4"), 9));
    assert!(!policy.redirects_outbound(ip("10.9.9.9"), 80));
    assert!(
        !policy.redirects_inbound(None, 9090),
        "other annotations still apply"
    );
    assert_eq!(
        policy.status_port,
        Some(15020),
        "bad status port keeps the default"
    );
}

#[test]
fn linkerd_skip_ports_with_ranges_replace_the_defaults() {
    let pod = fixture_pod("linkerd/linkerd-2.19__inject_emojivoto_pod_proxyignores.golden.yml");
    let (policy, warnings) = PodPolicy::for_pod(Mesh::Linkerd, &pod);
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(
        (policy.outbound_port, policy.inbound_port, policy.proxy_uid),
        (4140, 4143, 2102)
    );
    for port in [22, 8100, 8101, 8102, 4190, 4191, 4143] {
        assert!(
            !policy.redirects_inbound(None, port),
            "inbound {port} skipped"
        );
    }
    assert!(policy.redirects_inbound(None, 8103));
    assert!(
        policy.redirects_inbound(None, 4567),
        "annotation replaced 4567,4568"
    );
    assert!(!policy.redirects_outbound(ip("10.0.0.1"), 5432));
    assert!(policy.redirects_outbound(ip("10.0.0.1"), 4567));

    let plain = fixture_pod("linkerd/linkerd-2.19__inject_emojivoto_pod.golden.yml");
    let (policy, _) = PodPolicy::for_pod(Mesh::Linkerd, &plain);
    assert!(!policy.redirects_inbound(None, 4567), "default skip list");
    assert!(!policy.redirects_outbound(ip("10.0.0.1"), 4568));

    let overrides = fixture_pod(
        "linkerd/linkerd-2.19__inject_emojivoto_deployment_config_overrides.golden.yml",
    );
    let (policy, _) = PodPolicy::for_pod(Mesh::Linkerd, &overrides);
    for port in [9998, 7777, 8888, 4190] {
        assert!(!policy.redirects_inbound(None, port), "inbound {port}");
    }
    assert!(!policy.redirects_outbound(ip("10.0.0.1"), 9999));

    let (policy, warnings) = PodPolicy::from_annotations(
        Mesh::Linkerd,
        &annotations(&[
            (
                "config.linkerd.io/skip-outbound-ports",
                "1000-1010, 9-3, a-b, 20-70000, 443",
            ),
            (
                "config.linkerd.io/skip-subnets",
                "10.0.0.0/8,fd00::/8,bogus",
            ),
            ("config.linkerd.io/proxy-uid", "3000"),
        ]),
    );
    let elements: Vec<&str> = warnings.iter().map(|w| w.element.as_str()).collect();
    assert_eq!(elements, vec!["9-3", "a-b", "20-70000", "bogus"]);
    assert!(!policy.redirects_outbound(ip("1.1.1.1"), 1005));
    assert!(!policy.redirects_outbound(ip("1.1.1.1"), 443));
    assert!(policy.redirects_outbound(ip("1.1.1.1"), 1011));
    assert!(!policy.redirects_outbound(ip("10.3.3.3"), 80));
    assert!(!policy.redirects_outbound(ip("fd12::1"), 80));
    assert_eq!(policy.proxy_uid, 3000);
}

#[test]
fn kuma_exclusions_uid_and_consolidated_config() {
    let classic = fixture_pod("kuma/kuma-2.12.3__inject.16.golden.yaml");
    let (policy, warnings) = PodPolicy::for_pod(Mesh::Kuma, &classic);
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(policy.proxy_uid, 5678);
    for port in [1234, 1235, 9000, 9901, 15001, 15006] {
        assert!(!policy.redirects_inbound(None, port), "inbound {port}");
    }
    assert!(policy.redirects_inbound(None, 8080));
    assert!(!policy.redirects_outbound(ip("10.0.0.1"), 1236));

    // The same pod from Kuma master: the consolidated annotation carries the same result.
    let native = fixture_pod("kuma/kuma-master__inject.16.golden.yaml");
    let (native_policy, warnings) = PodPolicy::for_pod(Mesh::Kuma, &native);
    assert!(warnings.is_empty(), "{warnings:?}");
    for port in [1234, 1235, 9000] {
        assert!(
            !native_policy.redirects_inbound(None, port),
            "inbound {port}"
        );
    }
    assert!(!native_policy.redirects_outbound(ip("10.0.0.1"), 1236));
    assert_eq!(native_policy.proxy_uid, 5678);
    assert_eq!(native_policy.dns_port, None, "redirect.dns.enabled: false");

    let ips = fixture_pod("kuma/kuma-2.12.3__inject.38.golden.yaml");
    let (policy, _) = PodPolicy::for_pod(Mesh::Kuma, &ips);
    assert!(!policy.redirects_outbound(ip("10.0.0.1"), 80), "bare IP");
    assert!(policy.redirects_outbound(ip("10.0.0.2"), 80));
    assert!(!policy.redirects_outbound(ip("172.16.9.9"), 80));
    assert!(!policy.redirects_outbound(ip("fe80::1"), 80));
    assert!(
        !policy.redirects_outbound(ip("fe80::abcd"), 80),
        "fe80::/10"
    );
    assert!(policy.redirects_outbound(ip("fd00::1"), 80));

    let sources = fixture_pod("kuma/kuma-master__inject.39.golden.yaml");
    let (policy, warnings) = PodPolicy::for_pod(Mesh::Kuma, &sources);
    assert!(warnings.is_empty(), "{warnings:?}");
    assert!(
        !policy.redirects_inbound(Some(ip("172.32.200.1")), 8080),
        "172.32.16.8/16"
    );
    assert!(!policy.redirects_inbound(Some(ip("192.168.0.1")), 8080));
    assert!(policy.redirects_inbound(Some(ip("192.168.0.2")), 8080));

    let (policy, warnings) = PodPolicy::from_annotations(
        Mesh::Kuma,
        &annotations(&[
            (
                "traffic.kuma.io/transparent-proxy-config",
                "redirect: [unclosed",
            ),
            ("traffic.kuma.io/exclude-outbound-ports", "1-5,77"),
            ("kuma.io/sidecar-uid", "kuma"),
        ]),
    );
    let names: Vec<&str> = warnings.iter().map(|w| w.annotation.as_str()).collect();
    assert_eq!(
        names,
        vec![
            "traffic.kuma.io/transparent-proxy-config",
            "traffic.kuma.io/exclude-outbound-ports",
            "kuma.io/sidecar-uid"
        ]
    );
    assert!(
        warnings[1].problem.contains("ranges are not supported"),
        "{}",
        warnings[1]
    );
    assert!(!policy.redirects_outbound(ip("1.1.1.1"), 77));
    assert_eq!(policy.proxy_uid, 5678);
}

#[test]
fn osm_synthetic_pod_and_inclusion_semantics() {
    // No OSM fixture exists (OSM is archived): this pod is SYNTHETIC, built from the
    // injector's documented markers (label osm-proxy-uuid, container envoy, UID 1500).
    let pod = PodInfo::from_json(
        br#"{"metadata":{"name":"bookstore","namespace":"bookstore","uid":"osm-1",
              "labels":{"osm-proxy-uuid":"0b6d6b2a-8c6e-4a4e-9d1c-1f0e1c2b3a4d"},
              "annotations":{"openservicemesh.io/outbound-port-exclusion-list":"6379, 5432",
                             "openservicemesh.io/outbound-ip-range-inclusion-list":"10.0.0.0/8"}},
            "spec":{"nodeName":"n","initContainers":[{"name":"osm-init"}],
              "containers":[{"name":"bookstore"},{"name":"envoy","securityContext":{"runAsUser":1500}}]},
            "status":{"phase":"Running","podIPs":[{"ip":"10.1.0.4"}]}}"#,
    )
    .unwrap();
    let decision = intercepted(&pod, Mesh::Osm).expect("osm pod");
    let policy = decision.policy;
    assert_eq!(
        (policy.outbound_port, policy.inbound_port, policy.proxy_uid),
        (15001, 15003, 1500)
    );
    assert!(!policy.redirects_outbound(ip("10.2.2.2"), 6379));
    assert!(policy.redirects_outbound(ip("10.2.2.2"), 80));
    assert!(
        !policy.redirects_outbound(ip("11.2.2.2"), 80),
        "not in the inclusion list"
    );
    for own in [15000, 15001, 15003, 15010, 15901, 15904] {
        assert!(!policy.redirects_inbound(None, own));
    }
    // Unlike Istio, an empty OSM inclusion list means everything.
    let (empty, _) = PodPolicy::from_annotations(
        Mesh::Osm,
        &annotations(&[("openservicemesh.io/outbound-ip-range-inclusion-list", "")]),
    );
    assert_eq!(empty.outbound_include_cidrs, CidrSelection::All);
    let mut no_label = pod.clone();
    no_label.labels.clear();
    assert!(is_meshed(&no_label, Mesh::Osm).is_none());
}

#[test]
fn annotations_file_gives_the_same_policy_as_the_pod() {
    for (file, mesh) in [
        (
            "istio/istio-1.26.0__traffic-annotations.yaml.injected",
            Mesh::Istio,
        ),
        (
            "linkerd/linkerd-2.19__inject_emojivoto_pod_proxyignores.golden.yml",
            Mesh::Linkerd,
        ),
        ("kuma/kuma-master__inject.39.golden.yaml", Mesh::Kuma),
    ] {
        let from_file = annotations_from_file(&fixtures_dir().join(file)).unwrap();
        let pod = fixture_pod(file);
        assert_eq!(from_file, pod.annotations, "{file}");
        assert_eq!(
            PodPolicy::from_annotations(mesh, &from_file),
            PodPolicy::from_annotations(mesh, &pod.annotations)
        );
    }
    let missing =
        annotations_from_file(std::path::Path::new("/nonexistent/annotations.yaml")).unwrap_err();
    assert!(
        missing.contains("/nonexistent/annotations.yaml"),
        "{missing}"
    );
}

#[test]
fn mesh_names_and_defaults() {
    for mesh in Mesh::ALL {
        assert_eq!(mesh.name().parse::<Mesh>().unwrap(), mesh);
    }
    assert!("consul"
        .parse::<Mesh>()
        .unwrap_err()
        .contains("istio, linkerd, kuma, osm"));
    let table: Vec<_> = Mesh::ALL
        .iter()
        .map(|m| {
            let d = m.defaults();
            (d.outbound_port, d.inbound_port, d.proxy_uid, d.dns_port)
        })
        .collect();
    assert_eq!(
        table,
        vec![
            (15001, 15006, 1337, Some(15053)),
            (4140, 4143, 2102, None),
            (15001, 15006, 5678, Some(15053)),
            (15001, 15003, 1500, None),
        ]
    );
}

/// Istio's TPROXY mode runs Envoy as uid 0 and makes its last hop from the caller's own
/// address, which the data path would steer back to Envoy: refused with a warning that names
/// the field, and nothing of the pod is intercepted (never a loop). The sidecar's identity
/// reaches the pod entry: Istio's GID rule follows its UID, other meshes have none; Kuma's
/// excluded inbound sources become inbound-exclude prefix rules.
#[test]
fn tproxy_is_refused_and_the_proxy_identity_is_per_pod() {
    use mb_agent::pods::compile;
    use mb_maps::layout::{rule_scope, POD_IN_CIDRS_EXCLUDE, RULE_EXCLUDE, RULE_INBOUND};
    let (tproxy, warnings) = PodPolicy::from_annotations(
        Mesh::Istio,
        &annotations(&[("sidecar.istio.io/interceptionMode", "TPROXY")]),
    );
    assert!(tproxy.intercepts_nothing());
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    let text = warnings[0].to_string();
    assert!(
        text.contains("sidecar.istio.io/interceptionMode") && text.contains("TPROXY"),
        "{text}"
    );

    let (_, warnings) = PodPolicy::from_annotations(
        Mesh::Istio,
        &annotations(&[("traffic.sidecar.istio.io/excludeInterfaces", "eth1")]),
    );
    assert!(
        warnings[0]
            .to_string()
            .contains("traffic.sidecar.istio.io/excludeInterfaces"),
        "{warnings:?}"
    );

    let (istio, _) = PodPolicy::from_annotations(Mesh::Istio, &annotations(&[]));
    let c = compile(3, &istio, false);
    assert_eq!((c.proxy_uid, c.proxy_gid), (1337, 1337));
    let (linkerd, _) = PodPolicy::from_annotations(Mesh::Linkerd, &annotations(&[]));
    let c = compile(3, &linkerd, false);
    assert_eq!((c.proxy_uid, c.proxy_gid), (2102, 0));
    let (kuma, warnings) = PodPolicy::from_annotations(
        Mesh::Kuma,
        &annotations(&[
            ("kuma.io/sidecar-uid", "7777"),
            ("traffic.kuma.io/exclude-inbound-ips", "10.9.0.0/16"),
        ]),
    );
    assert!(warnings.is_empty(), "{warnings:?}");
    let c = compile(3, &kuma, false);
    assert_eq!((c.proxy_uid, c.proxy_gid), (7777, 0));
    assert!(c.flags & POD_IN_CIDRS_EXCLUDE != 0);
    assert!(c
        .cidr_rules
        .iter()
        .any(|k| k.scope == rule_scope(3, RULE_INBOUND | RULE_EXCLUDE)));
    assert!(c.unsupported.is_empty(), "{:?}", c.unsupported);

    let (bad, warnings) =
        PodPolicy::from_annotations(Mesh::Kuma, &annotations(&[("kuma.io/sidecar-uid", "x1")]));
    assert_eq!(bad.proxy_uid, 5678, "a malformed UID keeps the default");
    assert!(
        warnings
            .iter()
            .any(|w| w.to_string().contains("kuma.io/sidecar-uid")),
        "{warnings:?}"
    );
}

/// DNS capture is a pod's own choice: Istio's ISTIO_META_DNS_CAPTURE in proxy.istio.io/config,
/// Kuma's kuma.io/builtin-dns; the agent's flag is only the default; a malformed value is a
/// warning naming the annotation, and the default applies.
#[test]
fn dns_capture_is_per_pod() {
    use mb_agent::pods::compile;
    use mb_maps::layout::POD_DNS_CAPTURE;
    let captures = |mesh: Mesh, pairs: &[(&str, &str)], default: bool| {
        let (policy, warnings) = PodPolicy::from_annotations(mesh, &annotations(pairs));
        (
            compile(1, &policy, default).flags & POD_DNS_CAPTURE != 0,
            warnings,
        )
    };
    let on = "proxyMetadata:\n  ISTIO_META_DNS_CAPTURE: \"true\"\n";
    let off = "{\"proxyMetadata\": {\"ISTIO_META_DNS_CAPTURE\": \"false\"}}";
    assert!(captures(Mesh::Istio, &[("proxy.istio.io/config", on)], false).0);
    assert!(!captures(Mesh::Istio, &[("proxy.istio.io/config", off)], true).0);
    assert!(captures(Mesh::Istio, &[], true).0, "no say: the default");
    assert!(!captures(Mesh::Istio, &[], false).0);
    let (captured, warnings) = captures(
        Mesh::Istio,
        &[(
            "proxy.istio.io/config",
            "proxyMetadata: {ISTIO_META_DNS_CAPTURE: maybe}",
        )],
        false,
    );
    assert!(!captured);
    assert!(
        warnings[0].to_string().contains("proxy.istio.io/config"),
        "{warnings:?}"
    );
    assert!(captures(Mesh::Kuma, &[("kuma.io/builtin-dns", "enabled")], false).0);
    assert!(!captures(Mesh::Kuma, &[("kuma.io/builtin-dns", "disabled")], true).0);
    // Linkerd has no DNS proxy: nothing to capture to, whatever the default.
    assert!(!captures(Mesh::Linkerd, &[], true).0);
}

/// Istio's DNS capture set in the istio-proxy container's environment (as the injector
/// writes `proxyMetadata` there, or a user sets it): read when `proxy.istio.io/config` does
/// not say; a malformed value is a warning naming the variable and the container.
#[test]
fn dns_capture_from_the_proxy_environment() {
    use mb_agent::pods::compile;
    use mb_maps::layout::POD_DNS_CAPTURE;
    let base = fixture_pod_value("istio/istio-master__pod.yaml.injected");
    let with_env = |value: &str, config: Option<&str>| {
        let mut pod = base.clone();
        // This fixture's istio-proxy is a native sidecar (an init container).
        for c in pod["spec"]["initContainers"].as_array_mut().unwrap() {
            if c["name"] == "istio-proxy" {
                c["env"]
                    .as_array_mut()
                    .unwrap()
                    .push(serde_json::json!({"name": "ISTIO_META_DNS_CAPTURE", "value": value}));
            }
        }
        if let Some(config) = config {
            pod["metadata"]["annotations"]["proxy.istio.io/config"] = config.into();
        }
        let pod = PodInfo::from_value(&pod).unwrap();
        let (policy, warnings) = PodPolicy::for_pod(Mesh::Istio, &pod);
        let flags = |default| compile(1, &policy, default).flags & POD_DNS_CAPTURE != 0;
        (flags(false), flags(true), warnings)
    };
    let (off_default, on_default, warnings) = with_env("true", None);
    assert!(off_default && on_default, "env true captures: {warnings:?}");
    let (off_default, on_default, _) = with_env("false", None);
    assert!(!off_default && !on_default, "env false never captures");
    // The annotation, when present, says it.
    let (off_default, _, _) = with_env(
        "true",
        Some("proxyMetadata:\n  ISTIO_META_DNS_CAPTURE: \"false\"\n"),
    );
    assert!(!off_default);
    let (off_default, on_default, warnings) = with_env("maybe", None);
    assert!(!off_default && on_default, "malformed: the default applies");
    let text = warnings
        .iter()
        .map(ToString::to_string)
        .find(|w| w.contains("ISTIO_META_DNS_CAPTURE"))
        .unwrap_or_else(|| panic!("no warning: {warnings:?}"));
    assert!(
        text.contains("istio-proxy") && text.contains("maybe"),
        "{text}"
    );
}
