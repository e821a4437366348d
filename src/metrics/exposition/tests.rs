use std::sync::Arc;

use super::*;
use crate::model::ParentInfo;
use crate::registry::Registry;
use crate::test_support::{mdev_type, nvidia_parent, scanned, two_p40s};

fn text(view: Arc<dyn RegistryView>, counters: Option<&CounterValues>, format: Format) -> String {
    String::from_utf8(render(view, counters, format).to_vec()).expect("UTF-8")
}

fn two_gpus() -> Registry {
    scanned(two_p40s())
}

#[test]
fn registry_families_carry_every_parent_and_type() {
    let registry = two_gpus();
    let seqnum = registry.seqnum();
    let out = text(Arc::new(registry), None, Format::Text);
    for line in [
        "# HELP mdevreg_parent_info An mdev parent device known to the registry; always 1, the labels describe it",
        "# TYPE mdevreg_parent_info gauge",
        r#"mdevreg_parent_info{parent="0000:3b:00.0",backend="mdev",physical_device="0000:3b:00.0",subsystem="pci",driver="nvidia",source="kernel"} 1"#,
        r#"mdevreg_type_available_instances{parent="0000:3b:00.0",type="nvidia-100",name="GRID P40-1Q",device_api="vfio-pci"} 24"#,
        r#"mdevreg_type_available_instances{parent="0000:3b:00.0",type="nvidia-101",name="GRID P40-2Q",device_api="vfio-pci"} 12"#,
        r#"mdevreg_type_available_instances{parent="0000:3c:00.0",type="nvidia-100",name="GRID P40-1Q",device_api="vfio-pci"} 20"#,
        r#"mdevreg_type_instances{parent="0000:3b:00.0",type="nvidia-100"} 2"#,
        r#"mdevreg_type_instances{parent="0000:3b:00.0",type="nvidia-101"} 0"#,
        r#"mdevreg_type_instances{parent="0000:3c:00.0",type="nvidia-100"} 4"#,
        r#"mdevreg_physical_device_creatable{physical_device="0000:3b:00.0",type="nvidia-100",name="GRID P40-1Q"} 24"#,
        r#"mdevreg_physical_device_creatable{physical_device="0000:3c:00.0",type="nvidia-100",name="GRID P40-1Q"} 20"#,
        &format!("mdevreg_registry_seqnum {seqnum}"),
        &format!(r#"mdevreg_build_info{{version="{VERSION}"}} 1"#),
    ] {
        assert!(
            out.lines().any(|l| l == line),
            "missing line {line:?} in:\n{out}"
        );
    }
    // Each family once, contiguous.
    assert_eq!(out.matches("# TYPE mdevreg_type_instances ").count(), 1);
    assert!(!out.contains("# EOF"));
}

#[test]
fn label_values_are_escaped() {
    let registry = scanned(vec![nvidia_parent(
        "weird",
        vec![mdev_type("t-1", "a \"quoted\" \\ name\nsecond line", 1, 0)],
    )]);
    let out = text(Arc::new(registry), None, Format::Text);
    assert!(
        out.contains(r#"name="a \"quoted\" \\ name\nsecond line""#),
        "{out}"
    );
    // No sample line is split.
    for line in out.lines() {
        assert!(
            line.starts_with('#') || line.starts_with("mdevreg_"),
            "stray line {line:?}"
        );
    }
}

#[test]
fn an_empty_registry_still_exposes_seqnum_and_build_info() {
    let out = text(Arc::new(Registry::new()), None, Format::Text);
    assert!(out.contains("\nmdevreg_registry_seqnum 0\n"), "{out}");
    assert!(out.contains("mdevreg_build_info{"), "{out}");
    assert!(!out.contains("mdevreg_parent_info{"), "{out}");
}

#[test]
fn the_registry_part_is_the_same_in_both_formats() {
    // The cache keeps one registry part for both formats: only gauges.
    let view: Arc<dyn RegistryView> = Arc::new(two_gpus());
    let (text_format, _) = encode_part(Part::Registry(Arc::clone(&view)), Format::Text, 0);
    let (openmetrics, _) = encode_part(Part::Registry(view), Format::OpenMetrics, 0);
    assert_eq!(text_format, openmetrics);
}

#[test]
fn counters_follow_each_format() {
    let values = CounterValues {
        uevents_received: 7,
        uevents_rejected: vec![("non_root_sender", 2), ("truncated", 0)],
        rescans: 3,
        registrations: vec![("kernel", 5), ("userspace", 1)],
        last_uevent_timestamp_seconds: Some(1_700_000_000.5),
        ..CounterValues::default()
    };
    let plain = render_counters(&values, Format::Text);
    assert!(
        plain.contains("# TYPE mdevreg_rescans_total counter\n"),
        "{plain}"
    );
    assert!(plain.contains("\nmdevreg_rescans_total 3\n"), "{plain}");
    assert!(
        plain.contains("\nmdevreg_uevents_rejected_total{reason=\"non_root_sender\"} 2\n"),
        "{plain}"
    );
    assert!(
        plain.contains("\nmdevreg_uevents_rejected_total{reason=\"truncated\"} 0\n"),
        "{plain}"
    );
    assert!(
        plain.contains("\nmdevreg_registrations_total{source=\"kernel\"} 5\n"),
        "{plain}"
    );
    assert!(
        plain.contains("\nmdevreg_last_uevent_timestamp_seconds 1700000000.5\n"),
        "{plain}"
    );
    let open = render_counters(&values, Format::OpenMetrics);
    assert!(open.contains("# TYPE mdevreg_rescans counter\n"), "{open}");
    assert!(open.contains("\nmdevreg_rescans_total 3\n"), "{open}");

    let none = render_counters(
        &CounterValues {
            last_uevent_timestamp_seconds: None,
            ..values
        },
        Format::Text,
    );
    assert!(
        !none.contains("mdevreg_last_uevent_timestamp_seconds"),
        "{none}"
    );
}

#[test]
fn openmetrics_ends_with_eof_after_the_counters() {
    let exposition = render(
        Arc::new(two_gpus()),
        Some(&CounterValues::default()),
        Format::OpenMetrics,
    );
    let out = String::from_utf8(exposition.to_vec()).expect("UTF-8");
    assert!(out.ends_with("\n# EOF\n"), "{out}");
    assert_eq!(out.matches("# EOF").count(), 1);
    assert!(
        out.find("mdevreg_rescans_total").expect("counters")
            > out.find("mdevreg_build_info").expect("registry")
    );
}

#[test]
fn creatable_sums_the_parents_of_one_physical_device() {
    // Two parents, one physical device each today: the sum is per parent.
    let registry = two_gpus();
    let out = text(Arc::new(registry), None, Format::Text);
    let creatable: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("mdevreg_physical_device_creatable{"))
        .collect();
    assert_eq!(creatable.len(), 3, "{out}");
}

#[test]
fn accept_headers_choose_the_format() {
    assert_eq!(Format::from_accept(None), Format::Text);
    assert_eq!(Format::from_accept(Some("*/*")), Format::Text);
    assert_eq!(
        Format::from_accept(Some("text/plain;version=0.0.4;q=0.5,*/*;q=0.1")),
        Format::Text
    );
    // What Prometheus 2.x sends.
    assert_eq!(
        Format::from_accept(Some(
            "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
        )),
        Format::OpenMetrics
    );
    assert_eq!(
        Format::from_accept(Some("application/openmetrics-text; q=0")),
        Format::Text
    );
}

#[test]
fn creatable_is_per_physical_gpu_as_get_capacity_counts() {
    let vf = |name: &str, available: u32| ParentInfo {
        backend: crate::model::Backend::NvidiaVfio,
        physical_device: "0000:41:00.0".to_owned(),
        ..nvidia_parent(
            name,
            vec![mdev_type("nvidia-1145", "NVIDIA L40S-1B", available, 0)],
        )
    };
    let s390 = ParentInfo {
        subsystem: "css".to_owned(),
        ..nvidia_parent(
            "0.0.0013",
            vec![mdev_type("vfio_ccw-io", "I/O subchannel", 1, 0)],
        )
    };
    let registry = scanned(vec![vf("0000:41:00.4", 1), vf("0000:41:00.5", 1), s390]);
    let parents: Vec<ParentInfo> = registry.parents().map(|p| p.info.clone()).collect();
    let out = text(Arc::new(registry), None, Format::Text);
    assert!(
        out.contains(r#"mdevreg_parent_info{parent="0000:41:00.4",backend="nvidia-vfio",physical_device="0000:41:00.0","#),
        "{out}"
    );
    assert!(
        out.contains(r#"mdevreg_parent_info{parent="0.0.0013",backend="mdev",physical_device="",subsystem="css","#),
        "{out}"
    );
    let creatable: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("mdevreg_physical_device_creatable{"))
        .collect();
    assert_eq!(
        creatable,
        [
            r#"mdevreg_physical_device_creatable{physical_device="0000:41:00.0",type="nvidia-1145",name="NVIDIA L40S-1B"} 2"#
        ]
    );
    // The same figure GetCapacity reports.
    let rows = crate::capacity::rows_for(&parents, "0000:41:00.0");
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].creatable, 2);
}
