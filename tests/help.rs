//! Every command's `--help` reads as a reference on its own: a description of what it reads and
//! writes before the usage line, flags under headings, examples for the main commands; `-h`
//! stays short.

mod common;

use common::cmrm;

#[test]
fn each_commands_long_help_describes_it_and_the_main_ones_show_examples() {
    let commands: &[&[&str]] = &[
        &["chat"],
        &["calibrate"],
        &["merge"],
        &["inspect"],
        &["eval", "safety"],
        &["eval", "utility"],
        &["eval", "fidelity"],
        &["eval", "judges"],
        &["analyze", "gap"],
        &["sweep"],
        &["report"],
        &["serve"],
        &["card"],
        &["quantize"],
        &["rpc-server"],
        &["devices"],
    ];
    for c in commands {
        let mut args = c.to_vec();
        args.push("--help");
        let o = cmrm(&args);
        let long = String::from_utf8_lossy(&o.stdout).into_owned();
        assert!(o.status.success(), "{c:?}: {long}");
        let about = long.split("Usage:").next().unwrap_or("");
        assert!(
            about.len() > 150,
            "{c:?} --help has no description: {about:?}"
        );
        args.pop();
        args.push("-h");
        let short = String::from_utf8_lossy(&cmrm(&args).stdout).into_owned();
        assert!(short.len() < long.len(), "{c:?}: -h is not the summary");
        let with_model = long.contains("--model");
        if with_model {
            assert!(
                long.contains("Model and llama.cpp:"),
                "{c:?}: flags not grouped"
            );
        }
    }
    for c in [
        &["chat"][..],
        &["calibrate"],
        &["serve"],
        &["sweep"],
        &["eval", "safety"],
    ] {
        let mut args = c.to_vec();
        args.push("--help");
        let long = String::from_utf8_lossy(&cmrm(&args).stdout).into_owned();
        assert!(
            long.contains("Examples:\n  cmrm "),
            "{c:?} --help shows no example"
        );
    }
}
