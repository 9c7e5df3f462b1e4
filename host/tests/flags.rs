//! Every numeric flag of `host` is range-checked before anything runs: one clap usage error
//! (exit 2) naming the flag and its range, and no file written.

mod common;

use common::{assert_usage_error, host, TempDir};

#[test]
fn numeric_flags_out_of_range_name_the_flag_and_the_range() {
    // Nothing is read or written: the check comes before anything else.
    let tmp = TempDir::new("flags");
    let out = tmp.join("run");
    let out = out.to_str().unwrap();
    // `--flag=value`, so that negative values reach the flag's parser.
    let train = |flag: &str, value: &str| vec!["train".to_string(), "--out".into(), out.into(), format!("{flag}={value}")];
    let cases: Vec<(Vec<String>, &[&str])> = vec![
        (train("--label-smoothing", "5"), &["--label-smoothing", "[0, 1)"]),
        (train("--lr", "-1"), &["--lr", "(0, 100]"]),
        (train("--lr", "0"), &["--lr", "(0, 100]"]),
        (train("--momentum", "-1"), &["--momentum", "[0, 1)"]),
        (train("--momentum", "1"), &["--momentum", "[0, 1)"]),
        (train("--warmup-epochs", "-1"), &["--warmup-epochs", "[0, 100000]"]),
        (train("--mixup", "-1"), &["--mixup", "[0, 100]"]),
        (train("--weight-decay", "NaN"), &["--weight-decay", "[0, 1]"]),
        (train("--loss-scale", "inf"), &["--loss-scale", "(0, 1000000000]"]),
        (train("--batch-size", "0"), &["--batch-size", "1..=65536"]),
        (train("--eval-batch-size", "0"), &["--eval-batch-size", "1..=65536"]),
        (train("--threads", "0"), &["--threads", "1..=1024"]),
        (train("--workers", "-2"), &["--workers", "1..=1024"]),
        (train("--image-size", "4"), &["--image-size", "8..=4096"]),
        (train("--limit-train", "0"), &["--limit-train", "1.."]),
        (train("--loss-scale-growth-interval", "0"), &["--loss-scale-growth-interval", "1.."]),
        (
            ["export", "--checkpoint", out, "--out", "/tmp/x.evw", "--percentile", "0"].map(String::from).to_vec(),
            &["--percentile", "(0, 100]"],
        ),
        (
            ["export", "--checkpoint", out, "--out", "/tmp/x.evw", "--calib-batches", "0"].map(String::from).to_vec(),
            &["--calib-batches", "1..="],
        ),
        (["eval", "--checkpoint", out, "-b", "0"].map(String::from).to_vec(), &["--batch-size", "1..=65536"]),
        (["info", "--num-classes", "0"].map(String::from).to_vec(), &["--num-classes", "1..=1000000"]),
        (["bench-train", "--steps", "0"].map(String::from).to_vec(), &["--steps", "1..="]),
    ];
    for (args, want) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        assert_usage_error(&host(&args), want);
    }
    assert!(!tmp.join("run").exists(), "a refused command created its run directory");
}
