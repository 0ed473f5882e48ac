//! The command line: how many iterations of what, which targets, where the report goes.

use std::path::PathBuf;

pub const USAGE: &str = "\
tether-bench: tether (runc and native executors) against containerd's Go shim, side by side

usage: tether-bench [OPTIONS]   (as root; build the shim first: cargo dist)

  --quick               tiny counts for a smoke run (10 iterations, 5 containers, 64 MiB,
                        4 pods polled for 12 s, a 10 s idle window, 3 pod starts, storms
                        of 100 and 500)
  --iterations N        iterations of every latency figure (lifecycle, exec, shim start,
                        shim lifecycle)
  --lifecycle N         create→start→exit→delete through containerd   [200]
  --exec N              exec /bin/true in a running container         [200]
  --shim-start N        `start` to a served Connect                   [200]
  --shim-lifecycle N    start+Create+Start+Wait+Delete+Shutdown       [200]
  --warmup N            unrecorded iterations per target first        [3]
  --pods N              pods of node memory and pod memory: the marginal
                        pod between N/2 and N                         [20]
  --node-settle S       seconds of metrics polling (every 10 s, as
                        kubelet) before each node-memory or
                        pod-memory reading                            [35]
  --idle-window S       seconds without calls over which an idle
                        shim's wake-ups are counted (per minute)      [60]
  --exec-storm A,B,...  exec counts after which the storm reads the
                        shim's memory (--only exec-storm)             [10000,100000]
  --containers N        containers of the memory figures              [50]
  --memory-rounds N     repetitions of the memory figures (node memory
                        and pod memory too)                           [1]
  --burst N             containers per burst                          [100]
  --in-flight N         concurrent creations in a burst, execs in the
                        exec storm                                    [8]
  --burst-rounds N      bursts per target                             [3]
  --pod-starts N        pods started through the CRI (containerd 2.x)
                        per kind of pod                               [30]
  --stdio-mib N         MiB a container writes to stdout              [1024]
  --stdio-rounds N      stdio runs per target                         [3]
  --only LIST           figures to run, comma-separated, of: node-memory, memory,
                        lifecycle, exec, burst, pod-memory, pod-start, stdio, shim-start,
                        shim-lifecycle, exec-storm [all but exec-storm, which is on demand]
  --targets LIST        of: go, runc, native                          [go,runc,native]
  --out DIR             where tether-bench.json and tether-bench.svg go [bench-results]
  -h, --help            this text
";

/// The figures, as `--only` names them, in the order they run.
pub const FIGURES: [&str; 11] = [
    "node-memory",
    "memory",
    "lifecycle",
    "exec",
    "burst",
    "pod-memory",
    "pod-start",
    "stdio",
    "shim-start",
    "shim-lifecycle",
    "exec-storm",
];
/// Figures that run only when `--only` names them: the exec storm takes an hour or more.
pub const ON_DEMAND: [&str; 1] = ["exec-storm"];
/// The targets, as `--targets` names them.
pub const TARGETS: [&str; 3] = ["go", "runc", "native"];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub lifecycle: usize,
    pub exec: usize,
    pub shim_start: usize,
    pub shim_lifecycle: usize,
    pub warmup: usize,
    pub containers: usize,
    pub memory_rounds: usize,
    pub pods: usize,
    pub node_settle_secs: u64,
    pub idle_window_secs: u64,
    pub storm: Vec<usize>,
    pub burst: usize,
    pub in_flight: usize,
    pub burst_rounds: usize,
    pub pod_starts: usize,
    pub stdio_mib: usize,
    pub stdio_rounds: usize,
    pub figures: Vec<String>,
    pub targets: Vec<String>,
    pub out: PathBuf,
}

impl Default for Options {
    /// The default counts.
    fn default() -> Options {
        Options {
            lifecycle: 200,
            exec: 200,
            shim_start: 200,
            shim_lifecycle: 200,
            warmup: 3,
            containers: 50,
            memory_rounds: 1,
            pods: 20,
            node_settle_secs: 35,
            idle_window_secs: 60,
            storm: vec![10_000, 100_000],
            burst: 100,
            in_flight: 8,
            burst_rounds: 3,
            pod_starts: 30,
            stdio_mib: 1024,
            stdio_rounds: 3,
            figures: FIGURES.iter().filter(|f| !ON_DEMAND.contains(f)).map(|f| f.to_string()).collect(),
            targets: TARGETS.map(String::from).to_vec(),
            out: PathBuf::from("bench-results"),
        }
    }
}

/// What the command line asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Command {
    Run(Box<Options>),
    Help,
}

impl Options {
    pub fn wants(&self, figure: &str) -> bool {
        self.figures.iter().any(|f| f == figure)
    }

    /// `name: value` pairs for the report.
    pub fn describe(&self) -> Vec<(String, String)> {
        let n = |k: &str, v: usize| (k.to_owned(), v.to_string());
        vec![
            n("lifecycle_iterations", self.lifecycle),
            n("exec_iterations", self.exec),
            n("shim_start_iterations", self.shim_start),
            n("shim_lifecycle_iterations", self.shim_lifecycle),
            n("warmup", self.warmup),
            n("memory_containers", self.containers),
            n("memory_rounds", self.memory_rounds),
            n("node_memory_pods", self.pods),
            ("node_memory_settle_secs".into(), self.node_settle_secs.to_string()),
            ("idle_window_secs".into(), self.idle_window_secs.to_string()),
            ("exec_storm".into(), self.storm.iter().map(usize::to_string).collect::<Vec<_>>().join(",")),
            n("burst_containers", self.burst),
            n("burst_in_flight", self.in_flight),
            n("burst_rounds", self.burst_rounds),
            n("pod_starts", self.pod_starts),
            n("stdio_mib", self.stdio_mib),
            n("stdio_rounds", self.stdio_rounds),
            ("figures".into(), self.figures.join(",")),
            ("targets".into(), self.targets.join(",")),
        ]
    }

    fn quick(&mut self) {
        *self = Options {
            lifecycle: 10,
            exec: 10,
            shim_start: 10,
            shim_lifecycle: 10,
            warmup: 1,
            containers: 5,
            memory_rounds: 1,
            pods: 4,
            node_settle_secs: 12,
            idle_window_secs: 10,
            storm: vec![100, 500],
            burst: 16,
            in_flight: 8,
            burst_rounds: 1,
            pod_starts: 3,
            stdio_mib: 64,
            stdio_rounds: 2,
            figures: std::mem::take(&mut self.figures),
            targets: std::mem::take(&mut self.targets),
            out: std::mem::take(&mut self.out),
        };
    }
}

/// Parses the arguments (without the program name). Later flags override earlier ones, so
/// `--quick --lifecycle 50` is a quick run with 50 lifecycles.
pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Command, String> {
    let mut o = Options::default();
    let mut it = args.into_iter();
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_owned(), Some(v.to_owned())),
            _ => (arg.clone(), None),
        };
        let mut value = || inline.clone().or_else(|| it.next()).ok_or_else(|| format!("{flag} needs a value"));
        let count = |v: String| -> Result<usize, String> {
            v.parse::<usize>().map_err(|_| format!("{flag}: {v:?} is not a count"))
        };
        match flag.as_str() {
            "-h" | "--help" => return Ok(Command::Help),
            "--quick" => o.quick(),
            "--iterations" => {
                let n = count(value()?)?;
                (o.lifecycle, o.exec, o.shim_start, o.shim_lifecycle) = (n, n, n, n);
            }
            "--lifecycle" => o.lifecycle = count(value()?)?,
            "--exec" => o.exec = count(value()?)?,
            "--shim-start" => o.shim_start = count(value()?)?,
            "--shim-lifecycle" => o.shim_lifecycle = count(value()?)?,
            "--warmup" => o.warmup = count(value()?)?,
            "--containers" => o.containers = count(value()?)?.max(1),
            "--memory-rounds" => o.memory_rounds = count(value()?)?,
            "--pods" => o.pods = count(value()?)?.max(2),
            "--node-settle" => o.node_settle_secs = count(value()?)? as u64,
            "--idle-window" => o.idle_window_secs = count(value()?)?.max(1) as u64,
            "--exec-storm" => {
                let mut counts =
                    value()?.split(',').map(|c| count(c.trim().to_owned())).collect::<Result<Vec<_>, _>>()?;
                counts.sort_unstable();
                counts.dedup();
                counts.retain(|c| *c > 0);
                if counts.is_empty() {
                    return Err(format!("{flag}: no count"));
                }
                o.storm = counts;
            }
            "--burst" => o.burst = count(value()?)?,
            "--in-flight" => o.in_flight = count(value()?)?.max(1),
            "--burst-rounds" => o.burst_rounds = count(value()?)?,
            "--pod-starts" => o.pod_starts = count(value()?)?,
            "--stdio-mib" => o.stdio_mib = count(value()?)?.max(1),
            "--stdio-rounds" => o.stdio_rounds = count(value()?)?,
            "--only" => o.figures = list(&flag, &value()?, &FIGURES)?,
            "--targets" => o.targets = list(&flag, &value()?, &TARGETS)?,
            "--out" => o.out = PathBuf::from(value()?),
            other => return Err(format!("unknown argument {other:?} (see --help)")),
        }
    }
    Ok(Command::Run(Box::new(o)))
}

/// A comma-separated list whose every item is one of `known`, in `known`'s order.
fn list(flag: &str, value: &str, known: &[&str]) -> Result<Vec<String>, String> {
    let items: Vec<&str> = value.split(',').map(str::trim).filter(|s| !s.is_empty()).collect();
    if let Some(bad) = items.iter().find(|i| !known.contains(i)) {
        return Err(format!("{flag}: unknown {bad:?} (known: {})", known.join(", ")));
    }
    if items.is_empty() {
        return Err(format!("{flag}: empty list"));
    }
    Ok(known.iter().filter(|k| items.contains(k)).map(|k| k.to_string()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &str) -> Result<Options, String> {
        match parse(args.split_whitespace().map(String::from))? {
            Command::Run(o) => Ok(*o),
            Command::Help => Err("help".into()),
        }
    }

    #[test]
    fn defaults_are_the_issues() {
        let o = run("").unwrap();
        assert_eq!(
            (o.lifecycle, o.exec, o.containers, o.burst, o.in_flight, o.stdio_mib),
            (200, 200, 50, 100, 8, 1024)
        );
        assert!(o.wants("memory") && o.wants("shim-lifecycle") && o.wants("node-memory"));
        assert!(!o.wants("exec-storm"), "the storm is on demand");
        assert_eq!((o.pods, o.node_settle_secs, o.idle_window_secs), (20, 35, 60));
        assert_eq!(o.storm, [10_000, 100_000]);
    }

    #[test]
    fn the_storm_runs_when_asked_for() {
        let o = run("--quick --only exec-storm").unwrap();
        assert_eq!(o.figures, ["exec-storm"]);
        assert_eq!(o.storm, [100, 500]);
        let o = run("--exec-storm 300,20,300").unwrap();
        assert_eq!(o.storm, [20, 300]);
        assert!(run("--exec-storm 0").is_err());
        assert!(run("--exec-storm x").unwrap_err().contains("not a count"));
    }

    #[test]
    fn later_flags_override_quick() {
        let o = run("--quick --lifecycle 50 --out=/tmp/x").unwrap();
        assert_eq!((o.lifecycle, o.exec, o.containers), (50, 10, 5));
        assert_eq!(o.out, PathBuf::from("/tmp/x"));
        let o = run("--iterations 7").unwrap();
        assert_eq!((o.lifecycle, o.exec, o.shim_start, o.shim_lifecycle), (7, 7, 7, 7));
    }

    #[test]
    fn lists_keep_a_fixed_order_and_refuse_unknowns() {
        let o = run("--only stdio,memory --targets native,go").unwrap();
        assert_eq!(o.figures, ["memory", "stdio"]);
        assert_eq!(o.targets, ["go", "native"]);
        assert!(run("--only memroy").unwrap_err().contains("memroy"));
        assert!(run("--lifecycle x").unwrap_err().contains("not a count"));
        assert!(run("--exec").unwrap_err().contains("needs a value"));
        assert!(run("--bogus").is_err());
        assert_eq!(parse(["-h".to_string()]), Ok(Command::Help));
    }
}
