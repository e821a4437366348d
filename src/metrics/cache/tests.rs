use std::sync::{Arc, RwLock};

use proptest::prelude::*;

use super::*;
use crate::model::{Backend, Lifetime, ParentInfo};
use crate::registry::{Input, Registry};
use crate::test_support::{mdev_type, nvidia_parent, scanned, two_p40s};

type Shared = Arc<RwLock<Arc<Registry>>>;

fn shared(parents: Vec<ParentInfo>) -> Shared {
    Arc::new(RwLock::new(Arc::new(scanned(parents))))
}

/// Applies `input` as the daemon does: on a copy of the published
/// registry (parents shared with the previous snapshot).
fn apply(shared: &Shared, input: Input) {
    let mut guard = shared.write().expect("lock");
    let _ = Arc::make_mut(&mut guard).apply(input);
}

/// The registry part rendered whole, from scratch.
fn whole(view: &Arc<dyn RegistryView>) -> String {
    render_registry(Arc::clone(view), 0).0
}

fn text(part: &RegistryPart) -> String {
    String::from_utf8(part.to_vec()).expect("UTF-8")
}

/// The two P40s and a third GPU offering no type.
fn three_gpus() -> Shared {
    let mut parents = two_p40s();
    parents.push(nvidia_parent("0000:3d:00.0", Vec::new()));
    shared(parents)
}

#[test]
fn the_cache_renders_once_per_sequence_number() {
    let shared = three_gpus();
    let view: Arc<dyn RegistryView> = shared.clone();
    let cache = ExpositionCache::new();
    let first = cache.registry_part(&view);
    let again = cache.registry_part(&view);
    assert!(
        Arc::ptr_eq(&first.chunks, &again.chunks),
        "the cached part is reused"
    );
    assert_eq!(text(&first), whole(&view));

    apply(
        &shared,
        Input::KernelParent {
            devpath: "/devices/pci0000:00/0000:3c:00.0".to_owned(),
            info: Some(nvidia_parent(
                "0000:3c:00.0",
                vec![mdev_type("nvidia-100", "GRID P40-1Q", 19, 5)],
            )),
        },
    );
    let changed = cache.registry_part(&view);
    assert_ne!(first, changed);
    let changed = text(&changed);
    assert!(
        changed.contains(r#"mdevreg_type_instances{parent="0000:3c:00.0",type="nvidia-100"} 5"#),
        "{changed}"
    );
    assert_eq!(changed, whole(&view));
}

#[test]
fn only_the_changed_parent_and_its_device_are_rendered_again() {
    let shared = three_gpus();
    let view: Arc<dyn RegistryView> = shared.clone();
    let cache = ExpositionCache::new();
    let first = cache.registry_part(&view);
    // 3 parents x 3 families, 3 devices (each PCI parent is its own), tail.
    assert_eq!(
        cache.last_render(),
        RenderStats {
            encoded: 13,
            reused: 0,
            whole: false
        }
    );
    apply(
        &shared,
        Input::KernelParent {
            devpath: "/devices/pci0000:00/0000:3b:00.0".to_owned(),
            info: Some(nvidia_parent(
                "0000:3b:00.0",
                vec![mdev_type("nvidia-100", "GRID P40-1Q", 23, 3)],
            )),
        },
    );
    let second = cache.registry_part(&view);
    assert_eq!(
        cache.last_render(),
        RenderStats {
            encoded: 3 + 1 + 1,
            reused: 6 + 2,
            whole: false
        }
    );
    assert_eq!(text(&second), whole(&view));
    // The fragments of the others are the same buffers, not copies.
    let shared_chunks = second
        .chunks
        .iter()
        .filter(|chunk| {
            first
                .chunks
                .iter()
                .any(|old| old.as_ptr() == chunk.as_ptr())
        })
        .count();
    assert!(shared_chunks >= 6, "{shared_chunks} chunks shared");
}

#[test]
fn the_cache_keeps_no_parent_the_registry_dropped() {
    let shared = three_gpus();
    let view: Arc<dyn RegistryView> = shared.clone();
    let cache = ExpositionCache::new();
    let _ = cache.registry_part(&view);
    let old = {
        let registry = shared.read().expect("lock");
        let parent = registry
            .shared_parents()
            .find(|parent| parent.name() == "0000:3c:00.0")
            .expect("registered");
        Arc::downgrade(parent)
    };
    apply(
        &shared,
        Input::KernelParent {
            devpath: "/devices/pci0000:00/0000:3c:00.0".to_owned(),
            info: None,
        },
    );
    assert!(
        old.upgrade().is_none(),
        "the cache holds a parent the registry dropped"
    );
    assert_eq!(text(&cache.registry_part(&view)), whole(&view));
}

#[test]
fn a_view_without_shared_parents_renders_everything_and_right() {
    // The CLI's list: new `Arc`s each time, nothing to take over.
    let registry = {
        let guard = three_gpus();
        let registry = Arc::clone(&guard.read().expect("lock"));
        registry
    };
    let list = |seqnum| -> Arc<dyn RegistryView> {
        Arc::new(crate::metrics::ParentList {
            seqnum,
            parents: registry.parents().cloned().map(Arc::new).collect(),
        })
    };
    let cache = ExpositionCache::new();
    let _ = cache.registry_part(&list(1));
    let view = list(2);
    let part = cache.registry_part(&view);
    assert_eq!(cache.last_render().reused, 0);
    assert_eq!(text(&part), whole(&view));
}

#[test]
fn many_changed_parents_are_encoded_in_batches_and_cut_right() {
    // More parents than one encoding takes, some without types, some
    // sharing a physical device.
    let count = PER_ENCODING * 2 + 7;
    let infos = |round: u32| -> Vec<ParentInfo> {
        (0..count)
            .map(|index| {
                let types = (0..index % 4)
                    .map(|t| mdev_type(&format!("t-{t}"), "T \"x\"\n", round + t as u32, t))
                    .collect();
                let mut info = nvidia_parent(
                    &format!("0000:{:02x}:{:02x}.0", index / 32, index % 32),
                    types,
                );
                if index % 5 == 0 {
                    info.backend = Backend::NvidiaVfio;
                    info.physical_device = format!("0000:f{}:00.0", index % 3);
                }
                info
            })
            .collect()
    };
    let shared = shared(infos(0));
    let view: Arc<dyn RegistryView> = shared.clone();
    let cache = ExpositionCache::new();
    assert_eq!(text(&cache.registry_part(&view)), whole(&view));
    assert!(!cache.last_render().whole);
    apply(&shared, Input::KernelScan(infos(1)));
    assert_eq!(text(&cache.registry_part(&view)), whole(&view));
    let stats = cache.last_render();
    assert!(!stats.whole);
    // Parents without types did not change, nor did the devices of those
    // that are their own physical device.
    let typeless = (0..count).filter(|index| index % 4 == 0).count();
    let own_devices = (0..count)
        .filter(|index| index % 4 == 0 && index % 5 != 0)
        .count();
    assert_eq!(stats.reused, 3 * typeless + own_devices, "{stats:?}");
}

/// One change to the registry, over a small pool of names so that changes
/// hit the same parents again.
#[derive(Clone, Debug)]
enum Change {
    /// A kernel parent appears or changes: `pf` shares a physical device
    /// (vendor VFIO VFs of one PF), `types` are (type index, available,
    /// instances).
    Kernel {
        index: u8,
        pf: Option<u8>,
        types: Vec<(u8, u32, u8)>,
    },
    /// A kernel parent disappears.
    KernelGone { index: u8 },
    /// A userspace registration (possibly over a kernel parent's name).
    Register {
        index: u8,
        owner: u8,
        available: u32,
    },
    /// A userspace owner leaves.
    OwnerGone { owner: u8 },
    /// A full scan finding these parents.
    Scan { indexes: Vec<u8>, available: u32 },
    /// A scrape happens here (renders the part from the cache).
    Scrape,
}

fn kernel_info(index: u8, pf: Option<u8>, types: &[(u8, u32, u8)]) -> ParentInfo {
    let name = format!("0000:{index:02x}:00.{}", index % 8);
    let types = types
        .iter()
        .map(|&(id, available, instances)| {
            // Names with characters that need escaping now and then.
            let label = if id % 3 == 0 {
                format!("\"Q\" {id}\\\n")
            } else {
                format!("GRID-{id}Q")
            };
            mdev_type(&format!("nvidia-{id}"), &label, available, instances.into())
        })
        .collect();
    let mut info = nvidia_parent(&name, types);
    if let Some(pf) = pf {
        info.backend = Backend::NvidiaVfio;
        info.physical_device = format!("0000:{:02x}:00.0", 0x80 + pf);
    }
    info
}

fn change() -> impl Strategy<Value = Change> {
    prop_oneof![
        4 => (
            0u8..8,
            proptest::option::of(0u8..2),
            proptest::collection::vec((0u8..5, 0u32..20, 0u8..3), 0..4)
        )
            .prop_map(|(index, pf, types)| Change::Kernel { index, pf, types }),
        1 => (0u8..8).prop_map(|index| Change::KernelGone { index }),
        1 => (0u8..10, 0u8..3, 0u32..5)
            .prop_map(|(index, owner, available)| Change::Register { index, owner, available }),
        1 => (0u8..3).prop_map(|owner| Change::OwnerGone { owner }),
        1 => (proptest::collection::vec(0u8..8, 0..6), 0u32..4)
            .prop_map(|(indexes, available)| Change::Scan { indexes, available }),
        3 => Just(Change::Scrape),
    ]
}

fn input(change: &Change) -> Option<Input> {
    Some(match change {
        Change::Kernel { index, pf, types } => {
            let info = kernel_info(*index, *pf, types);
            Input::KernelParent {
                devpath: info.devpath.clone(),
                info: Some(info),
            }
        }
        Change::KernelGone { index } => Input::KernelParent {
            devpath: kernel_info(*index, None, &[]).devpath,
            info: None,
        },
        Change::Register {
            index,
            owner,
            available,
        } => {
            // Indexes 8 and 9 are userspace-only names.
            let mut info = kernel_info(*index, None, &[(1, *available, 1)]);
            info.devpath = format!("/devices/virtual/mdevreg/{}", info.name);
            info.subsystem = "mdevreg".to_owned();
            Input::Register {
                info,
                owner: format!(":1.{owner}"),
                lifetime: Lifetime::Owner,
                uid: 0,
            }
        }
        Change::OwnerGone { owner } => Input::OwnerGone {
            owner: format!(":1.{owner}"),
        },
        Change::Scan { indexes, available } => Input::KernelScan(
            indexes
                .iter()
                .map(|&index| kernel_info(index, None, &[(0, *available, 0)]))
                .collect(),
        ),
        Change::Scrape => return None,
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Whatever the changes and whenever the scrapes, the incremental part
    /// is the whole render, byte for byte.
    #[test]
    fn incremental_rendering_equals_a_whole_render(
        changes in proptest::collection::vec(change(), 1..40)
    ) {
        let shared = shared(Vec::new());
        let view: Arc<dyn RegistryView> = shared.clone();
        let cache = ExpositionCache::new();
        for change in &changes {
            match input(change) {
                Some(input) => apply(&shared, input),
                None => {
                    let part = cache.registry_part(&view);
                    prop_assert!(!cache.last_render().whole);
                    prop_assert_eq!(text(&part), whole(&view));
                    prop_assert_eq!(part.len, part.to_vec().len());
                }
            }
        }
        let part = cache.registry_part(&view);
        prop_assert_eq!(text(&part), whole(&view));
    }
}
