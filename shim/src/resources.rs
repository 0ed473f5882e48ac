//! Update's resources: the OCI `LinuxResources` containerd sends, checked before any of it
//! reaches the runtime, so that a bad value is an InvalidArgument naming the field rather than
//! a half-applied update and a kernel's EINVAL.

use oci_spec::runtime::LinuxResources;
use tether_protos::protobuf::well_known_types::any::Any;

use crate::error::{Error, Result};

/// The CFS period bounds the kernel accepts, in microseconds.
const CPU_PERIOD_US: std::ops::RangeInclusive<u64> = 1_000..=1_000_000;
/// The smallest CFS quota the kernel accepts, in microseconds.
const MIN_CPU_QUOTA_US: i64 = 1_000;
/// The smallest cpu.shares value (v1; mapped to weight on v2).
const MIN_CPU_SHARES: u64 = 2;

/// Parses and checks Update's resources; returns the JSON to hand to the executor.
pub fn validate(any: &Any) -> Result<Vec<u8>> {
    if !any.type_url.ends_with("LinuxResources") {
        return Err(invalid(format!(
            "resources of type {:?}: tether takes the OCI runtime spec's LinuxResources",
            any.type_url
        )));
    }
    let resources: LinuxResources = serde_json::from_slice(&any.value)
        .map_err(|e| invalid(format!("resources are not a valid LinuxResources JSON object: {e}")))?;
    check(&resources, online_cpus().as_deref())?;
    Ok(any.value.clone())
}

fn invalid(message: String) -> Error {
    Error::InvalidArgument(message)
}

/// Checks the values the kernel would refuse. `online` is the host's online CPU list.
fn check(r: &LinuxResources, online: Option<&str>) -> Result<()> {
    if let Some(mem) = r.memory() {
        for (name, value) in
            [("memory.limit", mem.limit()), ("memory.reservation", mem.reservation()), ("memory.swap", mem.swap())]
        {
            if let Some(v) = value.filter(|&v| v != -1 && v <= 0) {
                return Err(invalid(format!("{name} = {v}: must be positive, or -1 for no limit")));
            }
        }
        if let (Some(limit), Some(swap)) = (mem.limit().filter(|&l| l > 0), mem.swap().filter(|&s| s > 0)) {
            if swap < limit {
                return Err(invalid(format!(
                    "memory.swap = {swap} is below memory.limit = {limit}: swap is memory plus swap, so it cannot be smaller"
                )));
            }
        }
    }
    if let Some(cpu) = r.cpu() {
        if let Some(s) = cpu.shares().filter(|&s| s < MIN_CPU_SHARES) {
            return Err(invalid(format!("cpu.shares = {s}: must be at least {MIN_CPU_SHARES}")));
        }
        if let Some(q) = cpu.quota().filter(|&q| q != -1 && q < MIN_CPU_QUOTA_US) {
            return Err(invalid(format!(
                "cpu.quota = {q}: must be at least {MIN_CPU_QUOTA_US} µs, or -1 for no limit"
            )));
        }
        if let Some(p) = cpu.period().filter(|p| !CPU_PERIOD_US.contains(p)) {
            return Err(invalid(format!(
                "cpu.period = {p}: must be between {} and {} µs",
                CPU_PERIOD_US.start(),
                CPU_PERIOD_US.end()
            )));
        }
        if let Some(cpus) = cpu.cpus().as_deref().filter(|c| !c.is_empty()) {
            let wanted = parse_cpu_list(cpus)
                .ok_or_else(|| invalid(format!("cpu.cpus = {cpus:?} is not a CPU list like \"0-2,4\"")))?;
            if let Some(online) = online.and_then(parse_cpu_list) {
                if let Some(bad) = first_missing(&wanted, &online) {
                    return Err(invalid(format!("cpu.cpus = {cpus:?}: CPU {bad} is not online")));
                }
            }
        }
        if let Some(mems) = cpu.mems().as_deref().filter(|m| !m.is_empty()) {
            parse_cpu_list(mems)
                .ok_or_else(|| invalid(format!("cpu.mems = {mems:?} is not a node list like \"0-1\"")))?;
        }
    }
    if let Some(pids) = r.pids() {
        if pids.limit() < -1 {
            return Err(invalid(format!("pids.limit = {}: must be positive, 0 or -1 for no limit", pids.limit())));
        }
    }
    Ok(())
}

fn online_cpus() -> Option<String> {
    std::fs::read_to_string("/sys/devices/system/cpu/online").ok().map(|s| s.trim().to_string())
}

/// A kernel list like `0-3,6` as its inclusive ranges, as written; `None` when it does not
/// parse. Ranges, not members: a list may span all of `u32` in a few bytes.
fn parse_cpu_list(list: &str) -> Option<Vec<(u32, u32)>> {
    let mut out = Vec::new();
    for part in list.trim().split(',') {
        let (lo, hi): (u32, u32) = match part.split_once('-') {
            Some((lo, hi)) => (lo.trim().parse().ok()?, hi.trim().parse().ok()?),
            None => {
                let n = part.trim().parse().ok()?;
                (n, n)
            }
        };
        if lo > hi {
            return None;
        }
        out.push((lo, hi));
    }
    Some(out)
}

/// The lowest member of `wanted` that no range of `have` holds. Walks range by range, so its
/// cost follows the number of ranges, not of members.
fn first_missing(wanted: &[(u32, u32)], have: &[(u32, u32)]) -> Option<u32> {
    let mut missing: Option<u32> = None;
    for &(lo, hi) in wanted {
        let mut next = Some(lo);
        while let Some(c) = next.filter(|&c| c <= hi) {
            match have.iter().filter(|&&(a, b)| a <= c && c <= b).map(|&(_, b)| b).max() {
                // Everything up to the end of the covering range is there; go on after it.
                Some(end) => next = end.checked_add(1),
                None => {
                    missing = Some(missing.map_or(c, |m| m.min(c)));
                    break;
                }
            }
        }
    }
    missing
}

#[cfg(test)]
mod tests {
    use super::*;
    use tether_protos::ttrpc::Code;

    fn any(json: &str) -> Any {
        Any {
            type_url: "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources".into(),
            value: json.as_bytes().to_vec(),
            ..Default::default()
        }
    }

    fn err_of(json: &str) -> String {
        let r: LinuxResources = serde_json::from_str(json).unwrap();
        let e = check(&r, Some("0-1")).unwrap_err();
        assert_eq!(e.code(), Code::INVALID_ARGUMENT);
        e.to_string()
    }

    #[test]
    fn accepts_what_ctr_and_the_cri_send() {
        let json = r#"{"devices":[{"allow":false,"access":"rwm"}],"memory":{"limit":67108864,"swap":67108864},
            "cpu":{"shares":512,"quota":50000,"period":100000,"cpus":"0-1","mems":"0"},"pids":{"limit":64}}"#;
        assert_eq!(validate(&any(json)).unwrap(), json.as_bytes());
        let r: LinuxResources = serde_json::from_str(r#"{"memory":{"limit":-1},"cpu":{"quota":-1}}"#).unwrap();
        check(&r, Some("0-1")).unwrap();
    }

    #[test]
    fn rejects_what_the_kernel_would() {
        assert!(err_of(r#"{"memory":{"limit":0}}"#).contains("memory.limit"));
        assert!(err_of(r#"{"memory":{"limit":100000000,"swap":1000}}"#).contains("memory.swap"));
        assert!(err_of(r#"{"cpu":{"shares":1}}"#).contains("cpu.shares"));
        assert!(err_of(r#"{"cpu":{"quota":10}}"#).contains("cpu.quota"));
        assert!(err_of(r#"{"cpu":{"period":5}}"#).contains("cpu.period"));
        assert!(err_of(r#"{"cpu":{"cpus":"0-7"}}"#).contains("CPU 2 is not online"));
        assert!(err_of(r#"{"cpu":{"cpus":"two"}}"#).contains("not a CPU list"));
        assert!(err_of(r#"{"pids":{"limit":-5}}"#).contains("pids.limit"));
    }

    #[test]
    fn rejects_what_does_not_parse() {
        let e = validate(&any(r#"{"memory":{"limit":"lots"}}"#)).unwrap_err();
        assert_eq!(e.code(), Code::INVALID_ARGUMENT);
        let wrong = Any { type_url: "types.containerd.io/WindowsResources".into(), ..Default::default() };
        assert!(validate(&wrong).unwrap_err().to_string().contains("LinuxResources"));
    }

    #[test]
    fn cpu_lists_parse_like_the_kernel_writes_them() {
        assert_eq!(parse_cpu_list("0-2,5"), Some(vec![(0, 2), (5, 5)]));
        assert_eq!(parse_cpu_list("3"), Some(vec![(3, 3)]));
        assert_eq!(parse_cpu_list("2-1"), None);
        assert_eq!(parse_cpu_list(""), None);
    }

    #[test]
    fn missing_cpus_are_found_range_by_range() {
        let online = [(0, 1), (4, 7)];
        assert_eq!(first_missing(&[(0, 1), (5, 6)], &online), None);
        assert_eq!(first_missing(&[(6, 9), (0, 3)], &online), Some(2));
        assert_eq!(first_missing(&[(0, u32::MAX)], &[(0, u32::MAX)]), None);
        assert_eq!(first_missing(&[(0, u32::MAX)], &online), Some(2));
    }

    #[test]
    fn a_huge_cpu_range_is_refused_without_listing_it() {
        // Listing the members of 0-4294967295 would take 16 GiB: the answer must come at once.
        let started = std::time::Instant::now();
        assert!(err_of(r#"{"cpu":{"cpus":"0-4294967295"}}"#).contains("CPU 2 is not online"));
        let mems: LinuxResources = serde_json::from_str(r#"{"cpu":{"mems":"0-4294967295"}}"#).unwrap();
        check(&mems, Some("0-1")).unwrap();
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

        /// No Update panics the shim, or allocates by what a CPU list spans.
        #[test]
        fn any_resources_validate_or_are_refused(
            json in proptest::prop_oneof![
                proptest::prelude::any::<String>(),
                r#"\{"(cpu|memory|pids)":\{"(cpus|mems|limit|shares|quota|period|swap)":("[0-9,-]{0,12}"|-?[0-9]{1,20})\}\}"#,
            ],
            cpus in "[0-9]{1,10}(-[0-9]{1,10})?(,[0-9]{1,10}(-[0-9]{1,10})?){0,3}",
        ) {
            for value in [json, format!(r#"{{"cpu":{{"cpus":"{cpus}","mems":"{cpus}"}}}}"#)] {
                if let Err(e) = validate(&any(&value)) {
                    proptest::prop_assert_eq!(e.code(), Code::INVALID_ARGUMENT);
                }
            }
        }
    }
}
