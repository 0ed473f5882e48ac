//! How samples are taken: round after round, each subject once per round, in an order that
//! rotates by one every round. A machine that gets slower or faster during the run (other
//! jobs, page cache, thermal) then weighs on every subject alike instead of on whichever
//! happened to run last, and no subject always follows the same neighbour.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use crate::interrupt;
use crate::results::Series;

/// After this many failed iterations a subject is left out of the rest of a figure.
const MAX_FAILURES: usize = 5;

/// The values one subject produced in one figure.
#[derive(Debug)]
pub struct Collected<V> {
    pub name: String,
    pub values: Vec<V>,
    pub failures: usize,
}

/// The order of `n` subjects in round `round`: 0..n rotated left by `round`.
pub fn rotation(n: usize, round: usize) -> Vec<usize> {
    (0..n).map(|k| (k + round) % n.max(1)).collect()
}

/// Runs `measure(subject, round)` for `warmup + rounds` rounds over all `subjects`, keeping the
/// values of the rounds after the warm-up. `round` counts from 0 across warm-up and recorded
/// rounds, so it can make ids unique. Errors are printed and counted. Stops early (keeping
/// what it has) when the user interrupts.
pub fn alternate<S, V>(
    title: &str,
    subjects: &[S],
    name: impl Fn(&S) -> String,
    warmup: usize,
    rounds: usize,
    mut measure: impl FnMut(&S, usize) -> Result<V, String>,
) -> Vec<Collected<V>> {
    let mut out: Vec<Collected<V>> =
        subjects.iter().map(|s| Collected { name: name(s), values: Vec::new(), failures: 0 }).collect();
    let total = warmup + rounds;
    // A progress counter on a terminal; a log (CI, `| tee`) gets the start and end only.
    let tty = std::io::stderr().is_terminal();
    if !tty {
        eprintln!("  {title}: {total} rounds ({warmup} warm-up)");
    }
    for round in 0..total {
        if tty {
            eprint!("\r  {title}: round {}/{total}   ", round + 1);
            let _ = std::io::stderr().flush();
        }
        for k in rotation(subjects.len(), round) {
            if interrupt::requested() {
                eprintln!("\n  {title}: interrupted");
                return out;
            }
            if out[k].failures >= MAX_FAILURES {
                continue;
            }
            match measure(&subjects[k], round) {
                Ok(v) if round >= warmup => out[k].values.push(v),
                Ok(_) => {}
                Err(e) => {
                    out[k].failures += 1;
                    eprintln!("\n  {title}: {} failed (round {round}): {e}", out[k].name);
                    if out[k].failures == MAX_FAILURES {
                        eprintln!("  {title}: giving up on {} after {MAX_FAILURES} failures", out[k].name);
                    }
                }
            }
        }
    }
    if tty {
        eprintln!("\r  {title}: done ({rounds} rounds)      ");
    }
    out
}

/// Series of the report from collected values, one number taken from each value.
pub fn series<V>(collected: &[Collected<V>], value: impl Fn(&V) -> f64) -> Vec<Series> {
    collected
        .iter()
        .map(|c| Series { name: c.name.clone(), samples: c.values.iter().map(&value).collect(), failures: c.failures })
        .collect()
}

/// `f` over `items` with at most `in_flight` at once; results in `items`' order. Items not
/// begun when the user interrupts get `None`.
pub fn in_parallel<T: Sync, R: Send>(items: &[T], in_flight: usize, f: impl Fn(&T) -> R + Sync) -> Vec<Option<R>> {
    let next = AtomicUsize::new(0);
    let results = Mutex::new((0..items.len()).map(|_| None).collect::<Vec<Option<R>>>());
    std::thread::scope(|scope| {
        for _ in 0..in_flight.clamp(1, items.len().max(1)) {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= items.len() || interrupt::requested() {
                    break;
                }
                let r = f(&items[i]);
                results.lock().unwrap()[i] = Some(r);
            });
        }
    });
    results.into_inner().unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_subject_leads_equally_often() {
        assert_eq!(rotation(3, 0), [0, 1, 2]);
        assert_eq!(rotation(3, 1), [1, 2, 0]);
        assert_eq!(rotation(3, 5), [2, 0, 1]);
        let mut firsts = [0; 3];
        for r in 0..300 {
            firsts[rotation(3, r)[0]] += 1;
        }
        assert_eq!(firsts, [100, 100, 100]);
        assert!(rotation(0, 3).is_empty());
    }

    #[test]
    fn warmup_is_dropped_and_failures_counted() {
        let got = alternate(
            "t",
            &["a", "b"],
            |s| s.to_string(),
            2,
            3,
            |s, round| {
                if *s == "b" && round == 3 {
                    Err("boom".into())
                } else {
                    Ok(round)
                }
            },
        );
        assert_eq!(got[0].values, [2, 3, 4]);
        assert_eq!((got[1].values.clone(), got[1].failures), (vec![2, 4], 1));
        let s = series(&got, |v| *v as f64 * 2.0);
        assert_eq!(s[0].samples, [4.0, 6.0, 8.0]);
    }

    #[test]
    fn a_failing_subject_is_given_up() {
        let mut calls = 0;
        let got = alternate(
            "t",
            &["x"],
            |s| s.to_string(),
            0,
            50,
            |_, _| -> Result<(), String> {
                calls += 1;
                Err("no".into())
            },
        );
        assert_eq!((calls, got[0].failures), (MAX_FAILURES, MAX_FAILURES));
    }

    #[test]
    fn parallel_keeps_order_and_bounds_concurrency() {
        let running = AtomicUsize::new(0);
        let peak = AtomicUsize::new(0);
        let items: Vec<usize> = (0..40).collect();
        let out = in_parallel(&items, 4, |i| {
            let now = running.fetch_add(1, Ordering::SeqCst) + 1;
            peak.fetch_max(now, Ordering::SeqCst);
            std::thread::sleep(std::time::Duration::from_millis(2));
            running.fetch_sub(1, Ordering::SeqCst);
            i * 10
        });
        assert_eq!(out, items.iter().map(|i| Some(i * 10)).collect::<Vec<_>>());
        assert!(peak.load(Ordering::SeqCst) <= 4);
    }
}
