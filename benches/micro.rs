//! Micro benchmarks (criterion): uevent codecs (kernel and libudev formats),
//! MurmurHash2, the registry applying one re-read parent and a full 1000×32
//! snapshot, and sysfs reads of a fake tree.
//!
//! `cargo bench --bench micro`; under `cargo test --all-targets` criterion
//! runs every routine once as a smoke test.

#[path = "../tests/common/sysfs_fixture.rs"]
mod sysfs_fixture;

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use mdevreg::model::{MdevType, ParentInfo};
use mdevreg::registry::{Input, Registry};
use mdevreg::uevent::{
    encode_injection, encode_kernel, encode_libudev, murmur_hash2, parse_kernel, parse_libudev,
    string_hash32, tag_bloom64, Uevent,
};

/// A kernel `MDEV_STATE=registered` event as the kernel sends it.
fn registered_event() -> Uevent {
    Uevent::new("change", "/devices/pci0000:00/0000:00:03.1/0000:3b:00.0")
        .with("SUBSYSTEM", "pci")
        .with("DRIVER", "nvidia")
        .with("PCI_CLASS", "30200")
        .with("PCI_ID", "10DE:1EB8")
        .with("PCI_SUBSYS_ID", "10DE:12A2")
        .with("PCI_SLOT_NAME", "0000:3b:00.0")
        .with(
            "MODALIAS",
            "pci:v000010DEd00001EB8sv000010DEsd000012A2bc03sc02i00",
        )
        .with("MDEV_STATE", "registered")
        .with("SEQNUM", "4711")
}

fn uevent_benches(c: &mut Criterion) {
    let event = registered_event();
    let kernel_bytes = encode_kernel(&event).expect("encodable event");
    let libudev_bytes = encode_libudev(&event, &["mdevreg", "systemd"]).expect("encodable event");

    let mut group = c.benchmark_group("uevent");
    group.throughput(Throughput::Bytes(kernel_bytes.len() as u64));
    group.bench_function("kernel_parse", |b| {
        b.iter(|| parse_kernel(black_box(&kernel_bytes)))
    });
    group.bench_function("kernel_build", |b| {
        b.iter(|| encode_kernel(black_box(&event)))
    });
    group.bench_function("injection_build", |b| {
        let mut unnumbered = event.clone();
        unnumbered.env.retain(|(key, _)| key != "SEQNUM");
        b.iter(|| encode_injection(black_box(&unnumbered), 7))
    });
    group.throughput(Throughput::Bytes(libudev_bytes.len() as u64));
    group.bench_function("libudev_parse", |b| {
        b.iter(|| parse_libudev(black_box(&libudev_bytes)))
    });
    group.bench_function("libudev_build", |b| {
        b.iter(|| encode_libudev(black_box(&event), black_box(&["mdevreg", "systemd"])))
    });
    group.finish();
}

fn murmur_benches(c: &mut Criterion) {
    let mut group = c.benchmark_group("murmur");
    for text in [
        "pci",
        "mdev_bus",
        "/devices/pci0000:00/0000:00:03.1/0000:3b:00.0",
    ] {
        group.throughput(Throughput::Bytes(text.len() as u64));
        group.bench_function(format!("murmur_hash2/{}B", text.len()), |b| {
            b.iter(|| murmur_hash2(black_box(text.as_bytes()), 0))
        });
    }
    let long = vec![0x5au8; 4096];
    group.throughput(Throughput::Bytes(long.len() as u64));
    group.bench_function("murmur_hash2/4096B", |b| {
        b.iter(|| murmur_hash2(black_box(&long), 0))
    });
    group.throughput(Throughput::Elements(1));
    group.bench_function("string_hash32/subsystem", |b| {
        b.iter(|| string_hash32(black_box("mdevreg")))
    });
    group.bench_function("tag_bloom64/2_tags", |b| {
        b.iter(|| tag_bloom64(black_box(["mdevreg", "systemd"])))
    });
    group.finish();
}

/// One parent as the sysfs reader returns it: `n_types` types, each with
/// `instances` instances, shaped like the fixture's `many_parents`.
fn parent_info(index: u32, n_types: u32, instances: u32) -> ParentInfo {
    let name = format!(
        "0000:{:02x}:{:02x}.{}",
        (index >> 8) & 0xff,
        (index >> 3) & 0x1f,
        index & 7
    );
    let types = (0..n_types)
        .map(|type_index| MdevType {
            id: format!("nvidia-{}", 100 + type_index).into(),
            name: format!("GRID T4-{type_index}Q").into(),
            description: format!(
                "num_heads=4, framebuffer={}M, max_resolution=7680x4320",
                1024 * (1 + type_index % 16)
            )
            .into(),
            device_api: "vfio-pci".into(),
            available_instances: 16,
            devices: (0..instances)
                .map(|n| {
                    sysfs_fixture::uuid_for(u64::from(
                        (index * n_types + type_index) * instances + n,
                    ))
                })
                .collect(),
        })
        .collect();
    ParentInfo {
        devpath: format!("/devices/pci0000:00/{name}"),
        name,
        subsystem: "pci".to_owned(),
        driver: "nvidia".to_owned(),
        backend: Default::default(),
        physical_device: String::new(),
        types,
    }
}

fn snapshot(n_parents: u32, n_types: u32, instances: u32) -> Vec<ParentInfo> {
    (0..n_parents)
        .map(|index| parent_info(index, n_types, instances))
        .collect()
}

fn registry_benches(c: &mut Criterion) {
    let full = snapshot(1000, 32, 1);
    let mut loaded = Registry::new();
    loaded
        .apply(Input::KernelScan(full.clone()))
        .expect("a scan is always accepted");

    let mut group = c.benchmark_group("registry");
    // One re-read parent, identical to what the registry holds (the common
    // case for an instance add/remove hint that changed nothing).
    let same_parent = full[500].clone();
    group.bench_function("apply_one_parent/unchanged", |b| {
        b.iter_batched_ref(
            || (loaded.clone(), same_parent.clone()),
            |(registry, info)| {
                registry.apply(Input::KernelParent {
                    devpath: info.devpath.clone(),
                    info: Some(std::mem::take(info)),
                })
            },
            BatchSize::LargeInput,
        )
    });
    let mut changed_parent = full[500].clone();
    changed_parent.types[7].available_instances = 15;
    changed_parent.types[7]
        .devices
        .push(sysfs_fixture::uuid_for(0xdead_beef));
    group.bench_function("apply_one_parent/one_type_changed", |b| {
        b.iter_batched_ref(
            || (loaded.clone(), changed_parent.clone()),
            |(registry, info)| {
                registry.apply(Input::KernelParent {
                    devpath: info.devpath.clone(),
                    info: Some(std::mem::take(info)),
                })
            },
            BatchSize::LargeInput,
        )
    });
    group.bench_function("apply_one_parent/new_parent", |b| {
        let newcomer = parent_info(4000, 32, 1);
        b.iter_batched_ref(
            || (loaded.clone(), newcomer.clone()),
            |(registry, info)| {
                registry.apply(Input::KernelParent {
                    devpath: info.devpath.clone(),
                    info: Some(std::mem::take(info)),
                })
            },
            BatchSize::LargeInput,
        )
    });
    group.throughput(Throughput::Elements(full.len() as u64));
    group.bench_function("apply_snapshot_1000x32/into_empty", |b| {
        b.iter_batched(
            || (Registry::new(), full.clone()),
            |(mut registry, infos)| {
                let events = registry.apply(Input::KernelScan(infos));
                (registry, events)
            },
            BatchSize::LargeInput,
        )
    });
    group.bench_function("apply_snapshot_1000x32/unchanged", |b| {
        b.iter_batched(
            || (loaded.clone(), full.clone()),
            |(mut registry, infos)| {
                let events = registry.apply(Input::KernelScan(infos));
                (registry, events)
            },
            BatchSize::LargeInput,
        )
    });
    let mut drifted = full.clone();
    for info in drifted.iter_mut().step_by(10) {
        info.types[3].available_instances = 0;
    }
    group.bench_function("apply_snapshot_1000x32/100_changed", |b| {
        b.iter_batched(
            || (loaded.clone(), drifted.clone()),
            |(mut registry, infos)| {
                let events = registry.apply(Input::KernelScan(infos));
                (registry, events)
            },
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

fn sysfs_benches(c: &mut Criterion) {
    // 100 parents × 32 types, one instance on each of the first 4 types: a
    // tenth of the e2e tree, enough to show per-parent cost.
    let tree = sysfs_fixture::FakeSysfs::new();
    sysfs_fixture::many_parents(&tree, 100, 32, 0);
    for index in 0..100u32 {
        let pci_name = format!(
            "0000:{:02x}:{:02x}.{}",
            (index >> 8) & 0xff,
            (index >> 3) & 0x1f,
            index & 7
        );
        for type_index in 0..4u32 {
            tree.add_instance(
                &pci_name,
                &format!("nvidia-{}", 100 + type_index),
                &sysfs_fixture::uuid_for(u64::from(index * 4 + type_index)),
            );
        }
    }
    let root = tree.sysfs_root();
    let devpath = tree.devpath("0000:00:07.1");

    let mut group = c.benchmark_group("sysfs");
    group.sample_size(20);
    group.throughput(Throughput::Elements(100));
    group.bench_function("scan_100x32", |b| {
        b.iter(|| mdevreg::sysfs::scan(black_box(&root)))
    });
    group.bench_function("scan_types_100x32", |b| {
        b.iter(|| mdevreg::sysfs::scan_types(black_box(&root)))
    });
    group.throughput(Throughput::Elements(1));
    group.bench_function("read_parent_32_types", |b| {
        b.iter(|| mdevreg::sysfs::read_parent(black_box(&root), black_box(&devpath)))
    });
    group.finish();
}

criterion_group!(
    benches,
    uevent_benches,
    murmur_benches,
    registry_benches,
    sysfs_benches
);
criterion_main!(benches);
