//! The registry part of the exposition, kept between scrapes and rendered
//! incrementally: one fragment per (family, parent) and one per physical
//! device, each kept with the parents it was rendered from. After a change
//! only the fragments of parents that are not the same `Arc` as before are
//! rendered again (a commit replaces the `Arc` of each parent it touches and
//! shares the others, see [`crate::registry::Registry::shared_parents`]);
//! the part is then the list of fragments, shared by every scrape until the
//! next change. Pure: no I/O, no clock.

use std::sync::{Arc, Mutex, Weak};

use bytes::Bytes;

use super::exposition::{
    encode_devices, encode_fragment, encode_parents, header, physical_devices, render_registry,
    CounterValues, Exposition, Family, Format, Fragment, Parents, RegistryPart, RegistryView,
    PER_ENCODING,
};
use crate::model::Parent;

/// The fragments of one parent, per family of [`Family::PER_PARENT`].
#[derive(Debug)]
struct ParentFragments {
    name: Box<str>,
    /// The parent they were rendered from. Weak: the cache keeps no parent
    /// the registry dropped, only its allocation, so the address cannot be
    /// reused by another parent and equal addresses mean "unchanged".
    parent: Weak<Parent>,
    samples: [Bytes; 3],
}

/// `old` and `new` are the same parent (see [`ParentFragments::parent`]).
fn same(old: &Weak<Parent>, new: &Arc<Parent>) -> bool {
    std::ptr::eq(old.as_ptr(), Arc::as_ptr(new))
}

/// The `mdevreg_physical_device_creatable` fragment of a physical device.
#[derive(Debug)]
struct DeviceFragment {
    device: String,
    /// The parents sharing it, in the registry's order (weak, as
    /// [`ParentFragments::parent`]).
    members: Vec<Weak<Parent>>,
    samples: Bytes,
}

/// What the last rendering left.
#[derive(Debug)]
struct Rendered {
    part: RegistryPart,
    /// In the order of the registry's parents.
    parents: Vec<ParentFragments>,
    /// By device.
    devices: Vec<DeviceFragment>,
}

/// Figures of the last rendering (the bench and the tests read them).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RenderStats {
    /// Fragments encoded (parents × families, devices, the tail).
    pub encoded: usize,
    /// Fragments taken over from the previous rendering.
    pub reused: usize,
    /// A fragment did not encode as expected and the part was rendered
    /// whole instead (never seen: the tests check it stays false).
    pub whole: bool,
}

/// The registry part, kept while the registry's sequence number stays the
/// same, and its fragments, kept while their parents do.
#[derive(Debug, Default)]
pub struct ExpositionCache {
    /// Held while rendering, so concurrent scrapes after a change render
    /// once.
    last: Mutex<Option<Rendered>>,
    stats: Mutex<RenderStats>,
}

impl ExpositionCache {
    pub fn new() -> ExpositionCache {
        ExpositionCache::default()
    }

    /// Figures of the last rendering.
    pub fn last_render(&self) -> RenderStats {
        *crate::dbus::lock(&self.stats)
    }

    /// The registry part for `view`: the cached one if the registry's
    /// sequence number is the one it shows, else rendered now from the
    /// fragments of unchanged parents and new ones of the others (call it
    /// off the event loop: a change of every parent costs a whole render).
    pub fn registry_part(&self, view: &Arc<dyn RegistryView>) -> RegistryPart {
        let mut last = crate::dbus::lock(&self.last);
        if let Some(rendered) = last.as_ref() {
            if rendered.part.seqnum == view.seqnum() {
                return rendered.part.clone();
            }
        }
        let mut previous = last.take();
        let mut stats = RenderStats::default();
        let mut rendered = None;
        let _ = view.with_parents(&mut |parents| {
            rendered = render(parents, previous.take(), &mut stats);
            Ok(())
        });
        stats.whole = rendered.is_none();
        *crate::dbus::lock(&self.stats) = stats;
        match rendered {
            Some(rendered) => {
                let part = rendered.part.clone();
                *last = Some(rendered);
                part
            }
            // A fragment did not encode as expected: render whole (and
            // keep no fragments).
            None => {
                let (text, seqnum) = render_registry(Arc::clone(view), 64 * 1024);
                RegistryPart::new(seqnum, vec![Bytes::from(text)])
            }
        }
    }

    /// A complete exposition: the registry part (cached), the counters,
    /// and in OpenMetrics the closing `# EOF`.
    pub fn exposition(
        &self,
        view: &Arc<dyn RegistryView>,
        counters: Option<&CounterValues>,
        format: Format,
    ) -> Exposition {
        Exposition::new(self.registry_part(view), counters, format)
    }
}

/// Renders the registry part of `parents`, taking over from `previous`
/// the fragments of unchanged parents and devices; `None` if a fragment
/// did not encode.
fn render(
    parents: &dyn Parents,
    previous: Option<Rendered>,
    stats: &mut RenderStats,
) -> Option<Rendered> {
    let mut scratch = String::new();
    let (old_parents, old_devices) = previous.map_or((Vec::new(), Vec::new()), |rendered| {
        (rendered.parents, rendered.devices)
    });

    // Per parent: both lists are in the registry's order (by name), so one
    // walk finds the previous fragments; the same name with another `Arc`
    // (or an order the walk cannot follow) is rendered again.
    let mut old_parents = old_parents.into_iter().peekable();
    let mut kept = Vec::new();
    let mut changed = Vec::new();
    for parent in parents.parents() {
        while old_parents
            .next_if(|entry| &*entry.name < parent.name())
            .is_some()
        {}
        if let Some(entry) = old_parents.next_if(|entry| same(&entry.parent, parent)) {
            stats.reused += Family::PER_PARENT.len();
            kept.push(entry);
            continue;
        }
        stats.encoded += Family::PER_PARENT.len();
        changed.push((kept.len(), Arc::clone(parent)));
        kept.push(ParentFragments {
            name: parent.name().into(),
            parent: Arc::downgrade(parent),
            samples: Default::default(),
        });
    }
    // The changed parents, encoded in batches.
    for batch in changed.chunks(PER_ENCODING) {
        let encoded = encode_parents(
            batch.iter().map(|(_, parent)| Arc::clone(parent)).collect(),
            &mut scratch,
        )?;
        for ((index, _), samples) in batch.iter().zip(encoded) {
            kept[*index].samples = samples;
        }
    }
    drop(changed);

    // Per physical device, the same walk; unchanged means the same members.
    let mut old_devices = old_devices.into_iter().peekable();
    let mut devices = Vec::new();
    let mut changed_devices = Vec::new();
    for (device, members) in physical_devices(parents) {
        while old_devices
            .next_if(|entry| entry.device.as_str() < device)
            .is_some()
        {}
        let same = |entry: &DeviceFragment| {
            entry.device == device
                && entry.members.len() == members.len()
                && entry
                    .members
                    .iter()
                    .zip(&members)
                    .all(|(old, new)| same(old, new))
        };
        if let Some(entry) = old_devices.next_if(same) {
            stats.reused += 1;
            devices.push(entry);
            continue;
        }
        stats.encoded += 1;
        changed_devices.push((
            devices.len(),
            (
                device.to_owned(),
                members.iter().copied().cloned().collect::<Vec<_>>(),
            ),
        ));
        devices.push(DeviceFragment {
            device: device.to_owned(),
            members: members.into_iter().map(Arc::downgrade).collect(),
            samples: Bytes::new(),
        });
    }
    // The changed devices, encoded in batches.
    let mut pending = changed_devices.into_iter();
    loop {
        let (indexes, batch): (Vec<usize>, Vec<_>) = pending.by_ref().take(PER_ENCODING).unzip();
        if batch.is_empty() {
            break;
        }
        for (index, samples) in indexes
            .into_iter()
            .zip(encode_devices(batch, &mut scratch)?)
        {
            devices[index].samples = samples;
        }
    }

    stats.encoded += 1;
    let seqnum = parents.seqnum();
    let tail = encode_fragment(Fragment::Tail(seqnum), &mut scratch)?.pop()?;

    // The part: each family's header, then its fragments (empty ones, of a
    // parent without types, left out), then the tail.
    let head = |kind| Bytes::from_static(header(kind).as_bytes());
    let mut chunks = Vec::with_capacity(4 + 3 * kept.len() + devices.len() + 1);
    for (index, kind) in Family::PER_PARENT.into_iter().enumerate() {
        chunks.push(head(kind));
        chunks.extend(
            kept.iter()
                .map(|entry| &entry.samples[index])
                .filter(|samples| !samples.is_empty())
                .cloned(),
        );
    }
    chunks.push(head(Family::Creatable));
    chunks.extend(
        devices
            .iter()
            .map(|entry| &entry.samples)
            .filter(|samples| !samples.is_empty())
            .cloned(),
    );
    chunks.push(tail);
    Some(Rendered {
        part: RegistryPart::new(seqnum, chunks),
        parents: kept,
        devices,
    })
}

#[cfg(test)]
mod tests;
