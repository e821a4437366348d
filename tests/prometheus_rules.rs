//! The Prometheus examples in `packaging/prometheus/`: the alerting rules
//! pass `promtool check rules` and their unit tests (`promtool test
//! rules`), and the scrape configuration passes `promtool check config`.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::prereq::require_tools;

fn prometheus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/prometheus")
}

fn promtool(dir: &Path, args: &[&str]) -> Output {
    Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run promtool")
}

fn printed(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn rules_pass_check_and_their_unit_tests() {
    if !require_tools("rules_pass_check_and_their_unit_tests", &["promtool"]) {
        return;
    }
    let dir = prometheus_dir();
    let out = promtool(&dir, &["check", "rules", "mdevreg-rules.yml"]);
    assert!(out.status.success(), "{}", printed(&out));
    assert!(
        printed(&out).contains("SUCCESS: 5 rules found"),
        "{}",
        printed(&out)
    );
    let out = promtool(&dir, &["test", "rules", "mdevreg-rules.test.yml"]);
    assert!(out.status.success(), "{}", printed(&out));
}

#[test]
fn the_unit_tests_catch_a_broken_rule() {
    if !require_tools("the_unit_tests_catch_a_broken_rule", &["promtool"]) {
        return;
    }
    // The same tests against rules whose exhaustion threshold is off by one
    // must fail: the tests do look at the expressions.
    let scratch = tempfile::tempdir().expect("tempdir");
    let rules = fs::read_to_string(prometheus_dir().join("mdevreg-rules.yml")).expect("rules");
    let broken = rules.replace(
        "sum by (type, name) (mdevreg_type_available_instances) == 0",
        "sum by (type, name) (mdevreg_type_available_instances) <= 1",
    );
    assert_ne!(rules, broken, "the expression under test moved");
    fs::write(scratch.path().join("mdevreg-rules.yml"), broken).expect("write rules");
    fs::copy(
        prometheus_dir().join("mdevreg-rules.test.yml"),
        scratch.path().join("mdevreg-rules.test.yml"),
    )
    .expect("copy tests");
    let out = promtool(scratch.path(), &["test", "rules", "mdevreg-rules.test.yml"]);
    assert!(!out.status.success(), "{}", printed(&out));
    assert!(
        printed(&out).contains("MdevregTypeExhaustedEverywhere"),
        "{}",
        printed(&out)
    );
}

#[test]
fn the_scrape_config_is_valid() {
    if !require_tools("the_scrape_config_is_valid", &["promtool"]) {
        return;
    }
    let out = promtool(&prometheus_dir(), &["check", "config", "prometheus.yml"]);
    assert!(out.status.success(), "{}", printed(&out));
    assert!(
        printed(&out).contains("SUCCESS: 5 rules found"),
        "{}",
        printed(&out)
    );
}
