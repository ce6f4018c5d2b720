//! Issue "robustness": every command against every kind of bad input — missing, empty,
//! truncated, of the wrong type, not UTF-8, huge, a folder instead of a file, unreadable, an
//! output in a missing or read-only folder, a JSONL line with a missing or wrong-typed field,
//! an image path (relative to the data file) that does not exist. Each must exit with a status
//! in 1..=127 and a message naming the file (or line) and what to do, with no panic and no
//! output file left behind.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;

/// A scratch folder with one file of each kind of bad input.
struct Bad {
    dir: PathBuf,
}

impl Bad {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("cmrm-bad-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("a-folder.gguf")).unwrap();
        std::fs::create_dir_all(dir.join("readonly")).unwrap();
        let write = |name: &str, bytes: &[u8]| std::fs::write(dir.join(name), bytes).unwrap();
        write("empty.gguf", b"");
        write("empty.jsonl", b"");
        write("empty.jpg", b"");
        let model = std::fs::read(model()).unwrap();
        write("truncated.gguf", &model[..model.len() / 3]);
        write("text.gguf", b"This is a text file, not a GGUF model.\n");
        write("latin1.jsonl", b"{\"prompt\": \"caf\xe9\"}\n");
        write(
            "no-prompt.jsonl",
            b"{\"prompt\": \"ok\"}\n{\"image\": \"x.jpg\"}\n",
        );
        write(
            "number-prompt.jsonl",
            b"{\"prompt\": \"ok\"}\n{\"prompt\": 42}\n",
        );
        write(
            "missing-image.jsonl",
            b"{\"prompt\": \"What is it?\", \"image\": \"pictures/nowhere.jpg\"}\n",
        );
        write("unreadable.gguf", &model[..1024]);
        std::fs::set_permissions(
            dir.join("unreadable.gguf"),
            std::fs::Permissions::from_mode(0o000),
        )
        .unwrap();
        // 3 GiB without using the disk.
        let huge = std::fs::File::create(dir.join("huge.jsonl")).unwrap();
        huge.set_len(3 << 30).unwrap();
        let huge = std::fs::File::create(dir.join("huge.jpg")).unwrap();
        huge.set_len(3 << 30).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(dir.join("readonly"), std::fs::Permissions::from_mode(0o555))
            .unwrap();
        Self { dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).to_string_lossy().into_owned()
    }
}

impl Drop for Bad {
    fn drop(&mut self) {
        let _ = std::fs::set_permissions(
            self.dir.join("readonly"),
            std::fs::Permissions::from_mode(0o755),
        );
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs the binary as an unprivileged user when the tests run as root (so that an unreadable
/// file or a read-only folder is one for the command too).
fn run(args: &[String]) -> Output {
    let bin = env!("CARGO_BIN_EXE_cmrm");
    // SAFETY-free check of the effective user: root owns /proc/self.
    let root = std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false);
    let mut cmd = if root {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", bin]);
        c
    } else {
        Command::new(bin)
    };
    cmd.args(args).output().expect("run cmrm")
}

fn check(args: &[String], names: &str, fix: &[&str], leftover: Option<&Path>) {
    let o = run(args);
    let err = String::from_utf8_lossy(&o.stderr);
    let code = o.status.code();
    assert!(
        code.is_some_and(|c| (1..=127).contains(&c)),
        "{args:?}: exit {code:?} (a signal?): {err}"
    );
    assert!(!err.contains("panicked"), "{args:?}: panic: {err}");
    assert!(
        err.contains(names),
        "{args:?}: the message does not name {names:?}: {err}"
    );
    assert!(
        fix.iter().any(|f| err.contains(f)),
        "{args:?}: the message says none of {fix:?}: {err}"
    );
    if let Some(p) = leftover {
        assert!(!p.exists(), "{args:?}: left {} behind", p.display());
    }
}

fn owned(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| a.to_string()).collect()
}

/// A copy of the fixture files the unprivileged user can read.
fn readable_copy(path: &Path, dir: &Path) -> String {
    let to = dir.join(path.file_name().unwrap());
    if !to.exists() {
        std::fs::copy(path, &to).unwrap();
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    to.to_string_lossy().into_owned()
}

#[test]
fn every_command_refuses_every_bad_input_cleanly() {
    let bad = Bad::new();
    let good = bad.dir.join("good");
    std::fs::create_dir_all(&good).unwrap();
    std::fs::set_permissions(&good, std::fs::Permissions::from_mode(0o777)).unwrap();
    let m = readable_copy(&model(), &good);
    let p = readable_copy(&mmproj(), &good);
    let img = readable_copy(&photo(), &good);
    // The data sets with the images they name (../images/... relative to the sets).
    for dir in ["sets", "images"] {
        std::fs::create_dir_all(good.join(dir)).unwrap();
        std::fs::set_permissions(good.join(dir), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    for e in std::fs::read_dir(vendor("images")).unwrap() {
        readable_copy(&e.unwrap().path(), &good.join("images"));
    }
    let sets = readable_copy(&vendor("sets/harmful-eval.jsonl"), &good.join("sets"));
    let anchors = readable_copy(&vendor("sets/harmful-anchors.jsonl"), &good.join("sets"));
    let out = good.join("out").to_string_lossy().into_owned();
    let vec_out = good.join("v.gguf");
    let model_flags = |model: &str, mmproj: &str| {
        owned(&["-m", model, "--mmproj", mmproj, "-t", "2", "-c", "512"])
    };

    // Model and projector files, for every command that loads a model.
    let model_cmds: Vec<Vec<String>> = vec![
        owned(&["chat", "-p", "hi", "-n", "2", "--image", &img]),
        owned(&[
            "calibrate",
            "--anchors",
            &anchors,
            "--limit",
            "1",
            "-o",
            &vec_out.to_string_lossy(),
        ]),
        owned(&[
            "eval",
            "safety",
            "--data",
            &sets,
            "--limit",
            "1",
            "--conditions",
            "text",
            "--out",
            &out,
        ]),
        owned(&[
            "eval",
            "utility",
            "--data",
            &sets,
            "--limit",
            "1",
            "--conditions",
            "text",
            "--out",
            &out,
        ]),
        owned(&[
            "eval",
            "fidelity",
            "--data",
            &sets,
            "--limit",
            "1",
            "--conditions",
            "image",
            "--out",
            &out,
        ]),
        owned(&[
            "analyze",
            "gap",
            "--data",
            &sets,
            "--limit",
            "1",
            "--conditions",
            "image",
            "--out",
            &out,
        ]),
        owned(&["serve", "--port", "0"]),
    ];
    let gguf_kinds = [
        ("nothing-here.gguf", "check the path"),
        ("empty.gguf", "not a GGUF file"),
        ("text.gguf", "not a GGUF file"),
        ("truncated.gguf", "check the path"),
        ("a-folder.gguf", "folder"),
        ("unreadable.gguf", "check the path"),
    ];
    for cmd in &model_cmds {
        for (kind, fix) in gguf_kinds {
            let f = bad.path(kind);
            let mut args = cmd.clone();
            args.extend(model_flags(&f, &p));
            check(&args, &f, &[fix, "-m/--model"], Some(&vec_out));
            let mut args = cmd.clone();
            args.extend(model_flags(&m, &f));
            check(&args, &f, &[fix, "--mmproj"], Some(&vec_out));
        }
    }

    // The quantizer's input.
    let q_out = good.join("q.gguf");
    for (kind, fix) in [
        ("nothing-here.gguf", "check the path"),
        ("empty.gguf", "not a GGUF file"),
        ("text.gguf", "not a GGUF file"),
        ("truncated.gguf", "quantizing failed"),
        ("a-folder.gguf", "folder"),
        ("unreadable.gguf", "check the path"),
    ] {
        let f = bad.path(kind);
        let q = q_out.to_string_lossy();
        check(
            &owned(&["quantize", "--allow-requantize", &f, &q, "Q8_0"]),
            &f,
            &[fix],
            Some(&q_out),
        );
        let partial = std::fs::read_dir(&good)
            .unwrap()
            .filter_map(|e| e.ok())
            .any(|e| e.file_name().to_string_lossy().contains(".partial-"));
        assert!(
            !partial,
            "quantize {kind}: a partial output was left behind"
        );
    }

    // Data sets, for every command that reads one.
    let data_cmds: Vec<(Vec<String>, &str)> = vec![
        (
            owned(&["calibrate", "-o", &vec_out.to_string_lossy(), "--anchors"]),
            "--anchors",
        ),
        (
            owned(&[
                "eval",
                "safety",
                "--conditions",
                "text",
                "--out",
                &out,
                "--data",
            ]),
            "--data",
        ),
        (
            owned(&[
                "eval",
                "utility",
                "--conditions",
                "text",
                "--out",
                &out,
                "--data",
            ]),
            "--data",
        ),
        (
            owned(&[
                "eval",
                "fidelity",
                "--conditions",
                "image",
                "--out",
                &out,
                "--data",
            ]),
            "--data",
        ),
        (
            owned(&[
                "analyze",
                "gap",
                "--conditions",
                "image",
                "--out",
                &out,
                "--data",
            ]),
            "--data",
        ),
        (
            owned(&[
                "sweep",
                "--layer-grid",
                "4",
                "--cmrm",
                &bad.path("nothing.gguf"),
                "--out",
                &out,
                "--benign",
                &sets,
                "--data",
            ]),
            "--data",
        ),
        (
            owned(&[
                "sweep",
                "--layer-grid",
                "4",
                "--out",
                &out,
                "--data",
                &sets,
                "--benign",
            ]),
            "--benign",
        ),
    ];
    let data_kinds: [(&str, &str, &[&str]); 7] = [
        (
            "nothing-here.jsonl",
            "nothing-here.jsonl",
            &["cannot read", "check the path"],
        ),
        ("empty.jsonl", "empty.jsonl", &["empty"]),
        ("latin1.jsonl", "latin1.jsonl:1", &["UTF-8"]),
        ("no-prompt.jsonl", "no-prompt.jsonl:2", &["prompt"]),
        ("number-prompt.jsonl", "number-prompt.jsonl:2", &["prompt"]),
        ("a-folder.gguf", "a-folder.gguf", &["folder"]),
        ("huge.jsonl", "huge.jsonl", &["larger than"]),
    ];
    for (cmd, _) in &data_cmds {
        for (kind, names, fix) in data_kinds {
            let mut args = cmd.clone();
            args.push(bad.path(kind));
            args.extend(model_flags(&m, &p));
            check(&args, names, fix, Some(&vec_out));
        }
    }

    // Images: missing, empty, truncated, huge, a folder, a path relative to the data file.
    for (img_bad, fix) in [
        (bad.path("nothing-here.jpg"), "cannot read"),
        (bad.path("empty.jpg"), "empty"),
        (bad.path("text.gguf"), "not an image"),
        (bad.path("huge.jpg"), "larger than"),
        (bad.path("a-folder.gguf"), "folder"),
    ] {
        let mut args = owned(&["chat", "-p", "hi", "--image", &img_bad]);
        args.extend(model_flags(&m, &p));
        check(&args, &img_bad, &[fix], None);
    }
    let missing = bad.path("missing-image.jsonl");
    let mut args = owned(&[
        "eval",
        "safety",
        "--conditions",
        "image",
        "--out",
        &out,
        "--data",
        &missing,
    ]);
    args.extend(model_flags(&m, &p));
    check(
        &args,
        "pictures/nowhere.jpg",
        &["does not exist", "cannot read"],
        None,
    );

    // Vector files, for every command that reads one.
    for (kind, fix) in [
        ("nothing-here.gguf", "check the path"),
        ("empty.gguf", "not a GGUF file"),
        ("text.gguf", "not a GGUF file"),
        ("a-folder.gguf", "folder"),
        ("unreadable.gguf", "check the path"),
    ] {
        let f = bad.path(kind);
        let mut chat = owned(&["chat", "-p", "hi", "--cmrm", &f]);
        chat.extend(model_flags(&m, &p));
        check(&chat, &f, &[fix], None);
        check(&owned(&["inspect", &f]), &f, &[fix], None);
        check(&owned(&["card", &f]), &f, &[fix], None);
        check(
            &owned(&["merge", "-o", &vec_out.to_string_lossy(), &f]),
            &f,
            &[fix],
            Some(&vec_out),
        );
        let mut eval = owned(&[
            "eval",
            "safety",
            "--data",
            &sets,
            "--conditions",
            "cmrm",
            "--cmrm",
            &f,
            "--out",
            &out,
        ]);
        eval.extend(model_flags(&m, &p));
        check(&eval, &f, &[fix], None);
        let mut serve = owned(&["serve", "--port", "0", "--cmrm", &f]);
        serve.extend(model_flags(&m, &p));
        check(&serve, &f, &[fix], None);
    }

    // Outputs in a missing or read-only folder.
    for dir in ["no/such/folder", "readonly"] {
        let target = bad.dir.join(dir).join("v.gguf");
        let mut args = owned(&[
            "calibrate",
            "--anchors",
            &anchors,
            "--limit",
            "1",
            "-o",
            &target.to_string_lossy(),
        ]);
        args.extend(model_flags(&m, &p));
        check(
            &args,
            &target.to_string_lossy(),
            &["cannot create", "cannot write"],
            Some(&target),
        );
        let outdir = bad.dir.join(dir).join("out");
        let mut args = owned(&[
            "eval",
            "safety",
            "--data",
            &sets,
            "--limit",
            "1",
            "--conditions",
            "text",
            "--out",
            &outdir.to_string_lossy(),
        ]);
        args.extend(model_flags(&m, &p));
        check(
            &args,
            &bad.dir.join(dir).to_string_lossy(),
            &["cannot create", "cannot write"],
            Some(&outdir),
        );
        let quantized = bad.dir.join(dir).join("q.gguf");
        check(
            &owned(&[
                "quantize",
                "--allow-requantize",
                &m,
                &quantized.to_string_lossy(),
                "Q8_0",
            ]),
            &quantized.to_string_lossy(),
            &["does not exist", "cannot write"],
            Some(&quantized),
        );
        let report = bad.dir.join(dir).join("report.html");
        check(
            &owned(&[
                "report",
                "--out",
                &bad.path("a-folder.gguf"),
                "-o",
                &report.to_string_lossy(),
            ]),
            "a-folder.gguf",
            &["no summaries"],
            Some(&report),
        );
    }
    check(
        &owned(&["report", "--out", &bad.path("nothing-here")]),
        "nothing-here",
        &["no summaries", "cannot read"],
        None,
    );

    // Server flags that name files.
    let mut args = owned(&[
        "serve",
        "--port",
        "0",
        "--api-key-file",
        &bad.path("nothing-here.txt"),
    ]);
    args.extend(model_flags(&m, &p));
    check(&args, "nothing-here.txt", &["cannot read"], None);
    let mut args = owned(&[
        "serve",
        "--port",
        "0",
        "--media-path",
        &bad.path("empty.gguf"),
    ]);
    args.extend(model_flags(&m, &p));
    check(&args, "empty.gguf", &["not a folder"], None);
}
