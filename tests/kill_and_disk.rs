//! Issue "robustness": long jobs killed with SIGKILL at random points finish, when rerun, with
//! exactly the results of an uninterrupted run; a journal line cut by a kill is redone; shards
//! of another model or corruption are not merged; a full disk or a read-only folder gives a
//! clear error and leaves the previous file intact.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn tmp(name: &str) -> PathBuf {
    fresh_dir("kill", name)
}

/// A tiny deterministic generator of kill delays in `from..from + span`.
fn delays(seed: u64, n: usize, from: u64, span: u64) -> Vec<u64> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            from + x % span.max(1)
        })
        .collect()
}

/// Bytes in the files of `dir` (what a run has written so far).
fn written(dir: &Path) -> u64 {
    std::fs::read_dir(dir).map_or(0, |d| {
        d.filter_map(|e| e.ok()?.metadata().ok())
            .map(|m| m.len())
            .sum()
    })
}

fn spawn(args: &[String]) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_cmrm"))
        .args(args)
        .env("SOURCE_DATE_EPOCH", EPOCH)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// An uninterrupted run of `args` writing into `dir`: its stdout, and milliseconds until it
/// first wrote into `dir` (the model loaded, the work begun) and until it ended.
fn timed_run(args: &[String], dir: &Path) -> (String, u64, u64) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_cmrm"))
        .args(args)
        .env("SOURCE_DATE_EPOCH", EPOCH)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut out, &mut s).unwrap();
        s
    });
    let t0 = Instant::now();
    let mut first = None;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if first.is_none() && written(dir) > 0 {
            first = Some(t0.elapsed().as_millis() as u64);
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    assert!(status.success(), "{args:?} failed");
    let took = t0.elapsed().as_millis() as u64;
    (reader.join().unwrap(), first.unwrap_or(took), took)
}

/// Starts `args` (writing into `dir`) and kills it with SIGKILL after `ms`; true when the kill
/// landed mid-run: the run was still going and had written into `dir`.
fn kill_after(args: &[String], dir: &Path, ms: u64) -> bool {
    let before = written(dir);
    let mut child = spawn(args);
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_millis(ms) {
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let mid_run = written(dir) > before;
    child.kill().unwrap();
    child.wait().unwrap();
    mid_run
}

/// A run of `args` (writing into `out` via `with_out`) killed at several random points while it
/// works, and resumed, gives the uninterrupted run's output.
fn killed_and_resumed(
    name: &str,
    with_out: impl Fn(&Path) -> Vec<String>,
    output: impl Fn(&Path, &str) -> String,
) {
    let reference_dir = tmp(&format!("{name}-ref"));
    let (stdout, first, took) = timed_run(&with_out(&reference_dir), &reference_dir);
    let reference = output(&reference_dir, &stdout);
    let mut mid_run = 0;
    for seed in 1..=2 {
        let dir = tmp(&format!("{name}-{seed}"));
        let mut kills = 0;
        // Between the first write and three quarters of the work: the first kill of a seed
        // lands mid-run unless the machine stalls; the second, on a resumed run with less
        // work left, may land after its end.
        for ms in delays(seed, 2, first, (took - first) * 3 / 4) {
            kills += usize::from(kill_after(&with_out(&dir), &dir, ms));
        }
        mid_run += kills;
        let stdout = run_ok(&with_out(&dir));
        assert_eq!(
            output(&dir, &stdout),
            reference,
            "{name}: seed {seed} ({kills} kills mid-run)"
        );
        let leftovers: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains("cmrm-tmp") || n.ends_with(".partial"))
            .collect();
        assert!(leftovers.is_empty(), "{name}: left {leftovers:?}");
    }
    assert!(
        mid_run >= 2,
        "{name}: only {mid_run} of 4 kills landed mid-run (first write at {first} ms of {took} ms): the resume was not tested"
    );
}

#[test]
fn a_killed_calibration_resumes_to_the_same_vector_file() {
    let data = tmp("calib-data");
    let anchors = subset_in("harmful-anchors.jsonl", 5, &data);
    killed_and_resumed(
        "calibrate",
        |dir| {
            let mut a = vec!["calibrate".to_string()];
            a.extend(model_args());
            a.extend([
                "--anchors".into(),
                s(&anchors).into(),
                "-o".into(),
                s(&dir.join("v.gguf")).into(),
            ]);
            a
        },
        |dir, _| format!("{:?}", std::fs::read(dir.join("v.gguf")).unwrap()),
    );
}

#[test]
fn killed_evaluations_and_sweeps_resume_to_the_same_summaries() {
    let data = tmp("eval-data");
    let harmful = subset_in("harmful-eval.jsonl", 3, &data);
    let benign = subset_in("benign.jsonl", 3, &data);
    let vectors = data.join("v.gguf");
    let mut a = vec!["calibrate".to_string()];
    a.extend(model_args());
    a.extend([
        "--anchors".into(),
        s(&vendor("sets/harmful-anchors.jsonl")).into(),
        "--limit".into(),
        "2".into(),
        "-o".into(),
        s(&vectors).into(),
    ]);
    run_ok(&a);
    for (cmd, set) in [
        ("safety", &harmful),
        ("utility", &benign),
        ("fidelity", &harmful),
    ] {
        killed_and_resumed(
            cmd,
            |dir| {
                let mut a = vec!["eval".to_string(), cmd.to_string()];
                a.extend(model_args());
                a.extend(
                    [
                        "--data",
                        s(set),
                        "--cmrm",
                        s(&vectors),
                        "--out",
                        s(dir),
                        "-n",
                        "6",
                        "--json",
                    ]
                    .map(String::from),
                );
                a
            },
            |_, stdout| stdout.to_string(),
        );
    }
    killed_and_resumed(
        "sweep",
        |dir| {
            let mut a = vec!["sweep".to_string()];
            a.extend(model_args());
            a.extend(
                [
                    "--data",
                    s(&harmful),
                    "--benign",
                    s(&benign),
                    "--cmrm",
                    s(&vectors),
                    "--out",
                    s(dir),
                    "--alpha",
                    "0.5,1",
                    "--layer-grid",
                    "12",
                    "-n",
                    "8",
                    "--json",
                ]
                .map(String::from),
            );
            a
        },
        |_, stdout| stdout.to_string(),
    );
}

#[test]
fn a_torn_journal_line_is_redone_and_foreign_shards_are_not_merged() {
    let data = tmp("torn-data");
    let harmful = subset_in("harmful-eval.jsonl", 2, &data);
    let args = |dir: &Path| {
        let mut a = vec!["eval".to_string(), "safety".into()];
        a.extend(model_args());
        a.extend(
            [
                "--data",
                s(&harmful),
                "--out",
                s(dir),
                "--conditions",
                "text,image",
                "-n",
                "8",
                "--json",
            ]
            .map(String::from),
        );
        a
    };
    let reference = run_ok(&args(&tmp("torn-ref")));
    let dir = tmp("torn");
    run_ok(&args(&dir));
    // Cut the last record in the middle, as a kill during its write would.
    let journal = dir.join("safety.jsonl");
    let text = std::fs::read_to_string(&journal).unwrap();
    let cut = text.trim_end().rfind('\n').unwrap() + 20;
    std::fs::write(&journal, &text[..cut]).unwrap();
    assert_eq!(run_ok(&args(&dir)), reference);
    assert_eq!(
        std::fs::read_to_string(&journal).unwrap().lines().count(),
        4
    );

    // Shards of another corruption (or model) are refused by merge.
    let engine = engine();
    let anchors = cmrm::data::read_jsonl(&vendor("sets/harmful-anchors.jsonl")).unwrap();
    let shard = |i: usize, corruption: cmrm::media::Corruption| {
        let path = data.join(format!("s{i}-{corruption}.gguf"));
        let opts = cmrm::calibrate::CalibrateOptions {
            anchor_set: None,
            benign: None,
            method: cmrm::vectors::Method::Mean,
            corruption,
            system: None,
            shard: Some((i, 2)),
            recommended: Default::default(),
        };
        cmrm::calibrate::calibrate(&engine, &anchors[..2], &opts, &path).unwrap();
        path
    };
    let (a, b) = (
        shard(0, cmrm::media::Corruption::Noise(0)),
        shard(1, cmrm::media::Corruption::Blank),
    );
    let out = data.join("merged.gguf");
    let err = cmrm::calibrate::merge(&[a.clone(), b.clone()], &out, None)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(s(&b)) && err.contains("another model, corruption or anchor set"),
        "{err}"
    );
    assert!(!out.exists());
    let mut foreign = cmrm::vectors::CmrmVectors::load(&b).unwrap();
    foreign.corruption = "noise:0".into();
    foreign.model.model.fingerprint = "ffffffffffffffff".into();
    foreign.save(&b).unwrap();
    let err = cmrm::calibrate::merge(&[a, b.clone()], &out, None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("another model"), "{err}");
    assert!(!out.exists());
}

/// Runs `script` in a private mount namespace where `dir` is a tmpfs of `kb` kilobytes.
fn on_small_disk(dir: &Path, kb: usize, script: &str) -> std::process::Output {
    let full = format!(
        "mount -t tmpfs -o size={kb}k tmpfs '{}' && {script}",
        dir.display()
    );
    Command::new("unshare")
        .args(["-m", "sh", "-c", &full])
        .output()
        .expect("unshare -m (the disk-full test needs root or user namespaces)")
}

#[test]
fn a_full_disk_or_a_read_only_folder_keeps_the_previous_file() {
    let dir = tmp("disk");
    let anchors = subset_in("harmful-anchors.jsonl", 1, &dir);
    let disk = dir.join("disk");
    std::fs::create_dir_all(&disk).unwrap();
    let bin = env!("CARGO_BIN_EXE_cmrm");
    let vectors = disk.join("v.gguf");
    let calibrate = format!(
        "{bin} calibrate -m '{}' --mmproj '{}' -t 2 -c 1024 --anchors '{}' -o '{}'",
        s(&model()),
        s(&mmproj()),
        s(&anchors),
        s(&vectors)
    );
    // Write a vector file on a 300 kB disk, then again: the second copy does not fit.
    let script = format!(
        "{calibrate} 2>/dev/null && md5sum '{v}' && rm -f '{v}.partial' && {calibrate} --alpha 2; echo status=$?; md5sum '{v}'; ls -a '{d}'",
        v = s(&vectors),
        d = s(&disk)
    );
    let o = on_small_disk(&disk, 300, &script);
    let out = String::from_utf8_lossy(&o.stdout);
    let err = String::from_utf8_lossy(&o.stderr);
    let sums: Vec<&str> = out
        .lines()
        .filter(|l| l.contains("v.gguf") && l.len() > 32)
        .collect();
    assert_eq!(sums.len(), 2, "{out}\n{err}");
    assert_eq!(
        sums[0], sums[1],
        "the previous vector file changed:\n{out}\n{err}"
    );
    assert!(out.contains("status=1"), "{out}\n{err}");
    assert!(
        err.contains("No space left") && err.contains(s(&vectors)),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    assert!(
        !out.contains("cmrm-tmp"),
        "a temporary file was left: {out}"
    );

    // A read-only folder: a clear error before the model loads; the old file stays.
    let ro = dir.join("ro");
    std::fs::create_dir_all(&ro).unwrap();
    std::fs::write(ro.join("v.gguf"), b"previous").unwrap();
    let script = format!(
        "mount --bind '{d}' '{d}' && mount -o remount,bind,ro '{d}' && {bin} calibrate -m '{}' --anchors '{}' -o '{}'",
        s(&model()),
        s(&anchors),
        s(&ro.join("v.gguf")),
        d = s(&ro)
    );
    let o = Command::new("unshare")
        .args(["-m", "sh", "-c", &script])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("cannot write") && err.contains("Read-only"),
        "{err}"
    );
    assert_eq!(std::fs::read(ro.join("v.gguf")).unwrap(), b"previous");
}
