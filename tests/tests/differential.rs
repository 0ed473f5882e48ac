//! The two executors side by side: the same container, run once with tether's runc executor and
//! once with its native one under one containerd, must observe the same world, in its init
//! and in an exec'd process. Every section of [`PROBE`] is compared; a difference is a bug
//! unless README.md ("The native executor") documents it, and [`DOCUMENTED`] names it.

use std::collections::BTreeMap;

use tether_tests::env::{skip, Env, TetherConfig};
use tether_tests::{secs, Daemon, Output};

tether_tests::for_each_daemon!(runc_and_native_containers_observe_the_same);

/// What the container observes, section by section (`== name` lines). Values that name the
/// container (its id) are made equal by the caller; numbers that differ between any two
/// containers (mount ids, peer group ids, device numbers of anonymous mounts) are dropped here.
const PROBE: &str = r#"
echo "== status"; grep -E '^(Sig(Ign|Blk)|Cap|NoNewPrivs|Seccomp|Groups|Uid|Gid|Umask)' /proc/self/status
echo "== limits"; cat /proc/self/limits
echo "== env"; env | sort
echo "== cwd"; pwd
echo "== id"; id
echo "== umask"; umask
echo "== oom_score_adj"; cat /proc/self/oom_score_adj
echo "== hostname"; hostname
echo "== mountinfo"
cut -d' ' -f5- /proc/self/mountinfo | sed -E 's/(shared|master|propagate_from):[0-9]+/\1/g; s/ - ([^ ]+) [^ ]+ / - \1 SRC /' | sort
echo "== cgroup"; cat /proc/self/cgroup
echo "== cgroup limits"
for f in memory/memory.limit_in_bytes memory/memory.memsw.limit_in_bytes cpu/cpu.cfs_quota_us cpu/cpu.cfs_period_us cpu/cpu.shares pids/pids.max devices/devices.list memory.max cpu.max pids.max; do
  [ -e /sys/fs/cgroup/$f ] && echo "$f: $(cat /sys/fs/cgroup/$f | tr '\n' ' ')"
done
echo "== sysctl"; for k in net/ipv4/ip_unprivileged_port_start kernel/shmmax; do echo "$k: $(cat /proc/sys/$k)"; done
echo "== devices"; ls -l /dev | grep -v '^total' | awk '{ if ($1 ~ /^[cb]/) print $1, $3, $4, $5, $6, $NF; else if ($1 ~ /^l/) print $1, $(NF-2), $(NF-1), $NF; else print $1, $3, $4, $NF }'
echo "== done"
"#;

/// Differences README.md documents ("Where the native executor still differs"): lines of a
/// section that contain these words are left out on both sides.
const DOCUMENTED: &[(&str, &str)] = &[
    // libcontainer mounts sysfs read-write and makes the mount read-only; runc mounts it
    // read-only, so its superblock says ro.
    ("mountinfo", " - sysfs "),
];

fn documented(section: &str, line: &str) -> bool {
    DOCUMENTED.iter().any(|(s, words)| *s == section && line.contains(words))
}

/// The flags both containers get: ctr's default seccomp profile, a memory and a cpu limit, a
/// variable, a working directory, a read-only root.
const FLAGS: &[&str] =
    &["--seccomp", "--memory-limit", "67108864", "--cpus", "0.5", "--env", "PROBE=1", "--cwd", "/bin"];

fn sections(out: &Output, id: &str) -> BTreeMap<String, Vec<String>> {
    out.expect_ok();
    let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut current = String::new();
    for line in out.stdout.lines() {
        match line.strip_prefix("== ") {
            Some(name) => {
                current = name.to_string();
                map.entry(current.clone()).or_default();
            }
            None => map.entry(current.clone()).or_default().push(line.replace(id, "ID")),
        }
    }
    assert!(map.contains_key("done"), "the probe ran to its end: {out}");
    map
}

fn runc_and_native_containers_observe_the_same(daemon: Daemon) {
    let env = Env::new("runc_and_native_containers_observe_the_same", daemon);
    if !env.runtime.is_tether() {
        return skip("runc_and_native_containers_observe_the_same", "compares tether's two executors");
    }
    let config = |executor: &str| {
        let config = TetherConfig { executor: Some(executor.into()), ..Default::default() };
        config.write(&env.work().join(format!("{executor}.toml")))
    };
    let mut seen = BTreeMap::new();
    for executor in ["runc", "native"] {
        let path = config(executor);
        let flagged = |id: &str| FLAGS.iter().fold(env.run(id).config_path(&path), |run, f| run.flag(f));
        // The init: the probe is the container's first process.
        let init_id = format!("init-{executor}");
        let init = flagged(&init_id).rm().run(&["sh", "-c", PROBE]);
        // An exec'd process, in a container whose init sleeps.
        let id = format!("exec-{executor}");
        flagged(&id).detach().run(&["sleep", "1000"]).expect_ok();
        env.ctr.wait_status(&id, "RUNNING", secs(10));
        let exec = env.exec(&id, "probe", &["sh", "-c", PROBE]);
        seen.insert(executor, (sections(&init, &init_id), sections(&exec, &id)));
    }
    let mut differences = Vec::new();
    let (runc, native) = (&seen["runc"], &seen["native"]);
    for (what, r, n) in [("init", &runc.0, &native.0), ("exec", &runc.1, &native.1)] {
        for (section, want) in r {
            let got = n.get(section).cloned().unwrap_or_default();
            let open = |l: &&String| !documented(section, l);
            let missing: Vec<_> = want.iter().filter(|l| !got.contains(l)).filter(open).collect();
            let extra: Vec<_> = got.iter().filter(|l| !want.contains(l)).filter(open).collect();
            if !missing.is_empty() || !extra.is_empty() {
                differences.push(format!("{what} {section}:\n  runc only:   {missing:?}\n  native only: {extra:?}"));
            }
        }
    }
    assert!(differences.is_empty(), "runc and native containers differ:\n{}", differences.join("\n"));
}
