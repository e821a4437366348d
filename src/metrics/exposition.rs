//! The exposition itself, pure: the registry's parents and types and the
//! daemon's counters as Prometheus metric families, encoded with the
//! `prometheus-client` crate (a [`Collector`] over a registry view, no
//! per-series allocation), in the Prometheus text format 0.0.4 or in
//! OpenMetrics.
//!
//! Families (SPEC §7 names; every HELP text is here and nowhere else):
//! `mdevreg_parent_info`, `mdevreg_type_available_instances`,
//! `mdevreg_type_instances`, `mdevreg_physical_device_creatable`,
//! `mdevreg_registry_seqnum`, `mdevreg_build_info`, and the counters
//! `mdevreg_*_total` of [`CounterValues`].
//!
//! Two ways to render the registry part: whole ([`render_registry`], one
//! text), or as fragments, the samples of one family for one parent (or one
//! physical device), which [`super::cache`] keeps and re-renders only for
//! the parents a change touched ([`encode_fragment`]). Both go through the
//! same per-parent encoding functions, and a test checks that the fragments
//! put together are the whole text byte for byte. The counters part is small
//! and encoded on every call.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use bytes::Bytes;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::MetricType;

use crate::model::Parent;
use crate::registry::Registry;

/// The crate version, for `mdevreg_build_info`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// An exposition format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// The Prometheus text format 0.0.4 (node_exporter's textfile collector,
    /// `promtool check metrics`, `curl`).
    Text,
    /// OpenMetrics 1.0 text, what Prometheus asks for first.
    OpenMetrics,
}

impl Format {
    /// The `Content-Type` of a response in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Text => prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }

    /// The format to answer a request with this `Accept` header in:
    /// OpenMetrics when the client lists it (with a non-zero quality),
    /// else the text format.
    pub fn from_accept(accept: Option<&str>) -> Format {
        let Some(accept) = accept else {
            return Format::Text;
        };
        let wants_openmetrics = accept.split(',').any(|item| {
            let mut params = item.split(';').map(str::trim);
            let media = params.next().unwrap_or_default();
            let refused = params.any(|param| {
                param
                    .strip_prefix("q=")
                    .and_then(|q| q.parse::<f32>().ok())
                    .is_some_and(|q| q <= 0.0)
            });
            media.eq_ignore_ascii_case("application/openmetrics-text") && !refused
        });
        if wants_openmetrics {
            Format::OpenMetrics
        } else {
            Format::Text
        }
    }
}

/// Parents and the sequence number of the last event they reflect.
pub trait Parents {
    /// Sequence number of the last registry event (0 before any).
    fn seqnum(&self) -> u64;
    /// Every parent, in a stable order (each call starts over). Shared:
    /// an unchanged parent is the same `Arc` from one snapshot to the next,
    /// which is how the fragment cache tells it unchanged.
    fn parents(&self) -> Box<dyn Iterator<Item = &Arc<Parent>> + '_>;
}

impl Parents for Registry {
    fn seqnum(&self) -> u64 {
        Registry::seqnum(self)
    }

    fn parents(&self) -> Box<dyn Iterator<Item = &Arc<Parent>> + '_> {
        Box::new(Registry::shared_parents(self))
    }
}

/// Parents fetched from a daemon (`mdevreg metrics` asks it for them).
#[derive(Clone, Debug, Default)]
pub struct ParentList {
    pub seqnum: u64,
    pub parents: Vec<Arc<Parent>>,
}

impl Parents for ParentList {
    fn seqnum(&self) -> u64 {
        self.seqnum
    }

    fn parents(&self) -> Box<dyn Iterator<Item = &Arc<Parent>> + '_> {
        Box::new(self.parents.iter())
    }
}

/// Somewhere the registry can be read from while encoding: an owned
/// snapshot, or the daemon's shared registry (read-locked for the time of
/// one encoding).
pub trait RegistryView: Send + Sync + 'static {
    /// The sequence number of the last registry event (cheap).
    fn seqnum(&self) -> u64;
    /// Calls `f` with the parents.
    fn with_parents(&self, f: &mut dyn FnMut(&dyn Parents) -> fmt::Result) -> fmt::Result;
}

impl<P: Parents + Send + Sync + 'static> RegistryView for P {
    fn seqnum(&self) -> u64 {
        Parents::seqnum(self)
    }

    fn with_parents(&self, f: &mut dyn FnMut(&dyn Parents) -> fmt::Result) -> fmt::Result {
        f(self)
    }
}

/// The daemon's shared registry: the snapshot of the last commit, taken
/// once per encoding (no lock held while encoding).
impl RegistryView for RwLock<Arc<Registry>> {
    fn seqnum(&self) -> u64 {
        self.read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .seqnum()
    }

    fn with_parents(&self, f: &mut dyn FnMut(&dyn Parents) -> fmt::Result) -> fmt::Result {
        let registry = Arc::clone(
            &self
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        f(&*registry)
    }
}

/// The backend of a parent, for the `backend` label (`mdev`,
/// `nvidia-vfio`).
pub fn backend(parent: &Parent) -> &str {
    parent.info.backend.as_str()
}

/// The physical device a parent's capacity counts toward, for the
/// `physical_device` labels: its PF (`PhysicalDevice`), a PCI parent
/// without one itself, other parents none (as `GetCapacity` counts, see
/// [`crate::capacity`]).
pub fn physical_device(parent: &Parent) -> Option<&str> {
    crate::capacity::physical_device_of(&parent.info)
}

/// HELP texts, one per family.
mod help {
    pub const PARENT_INFO: &str =
        "An mdev parent device known to the registry; always 1, the labels describe it";
    pub const AVAILABLE: &str =
        "Instances of an mdev type that can still be created on a parent (sysfs available_instances)";
    pub const INSTANCES: &str = "Instances (mdev devices) of an mdev type that exist on a parent";
    pub const CREATABLE: &str =
        "Instances of a type that can still be created on a physical GPU, summed over the parents sharing it (an upper bound)";
    pub const SEQNUM: &str = "Sequence number of the last registry event";
    pub const BUILD_INFO: &str = "Version of the mdevreg that renders these metrics; always 1";
}

/// The registry's families made of per-parent (or per-physical-device)
/// samples, in the order they are exposed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    ParentInfo,
    Available,
    Instances,
    Creatable,
}

impl Family {
    pub const ALL: [Family; 4] = [
        Family::ParentInfo,
        Family::Available,
        Family::Instances,
        Family::Creatable,
    ];

    /// The families with samples per parent (the others per physical device).
    pub const PER_PARENT: [Family; 3] = [Family::ParentInfo, Family::Available, Family::Instances];

    pub fn name(self) -> &'static str {
        match self {
            Family::ParentInfo => "mdevreg_parent_info",
            Family::Available => "mdevreg_type_available_instances",
            Family::Instances => "mdevreg_type_instances",
            Family::Creatable => "mdevreg_physical_device_creatable",
        }
    }

    fn help(self) -> &'static str {
        match self {
            Family::ParentInfo => help::PARENT_INFO,
            Family::Available => help::AVAILABLE,
            Family::Instances => help::INSTANCES,
            Family::Creatable => help::CREATABLE,
        }
    }

    fn descriptor<'s>(
        self,
        encoder: &'s mut DescriptorEncoder,
    ) -> Result<MetricEncoder<'s>, fmt::Error> {
        encoder.encode_descriptor(self.name(), self.help(), None, MetricType::Gauge)
    }

    /// The samples of `parent` in this per-parent family.
    fn encode_parent(self, family: &mut MetricEncoder, parent: &Parent) -> fmt::Result {
        match self {
            Family::ParentInfo => {
                let labels = [
                    ("parent", parent.name()),
                    ("backend", backend(parent)),
                    ("physical_device", physical_device(parent).unwrap_or("")),
                    ("subsystem", parent.info.subsystem.as_str()),
                    ("driver", parent.info.driver.as_str()),
                    ("source", parent.source.as_str()),
                ];
                family.encode_family(&labels)?.encode_gauge(&1u32)
            }
            Family::Available => {
                for mdev_type in &parent.info.types {
                    let labels = [
                        ("parent", parent.name()),
                        ("type", mdev_type.id.as_str()),
                        ("name", mdev_type.name.as_str()),
                        ("device_api", mdev_type.device_api.as_str()),
                    ];
                    family
                        .encode_family(&labels)?
                        .encode_gauge(&mdev_type.available_instances)?;
                }
                Ok(())
            }
            Family::Instances => {
                for mdev_type in &parent.info.types {
                    let labels = [("parent", parent.name()), ("type", mdev_type.id.as_str())];
                    family
                        .encode_family(&labels)?
                        .encode_gauge(&(mdev_type.devices.len() as u64))?;
                }
                Ok(())
            }
            // Per physical device: see `encode_device`.
            Family::Creatable => Ok(()),
        }
    }
}

/// The physical devices of `parents` with the parents sharing each, by
/// device (few groups, each in the parents' order).
pub fn physical_devices(parents: &dyn Parents) -> BTreeMap<&str, Vec<&Arc<Parent>>> {
    let mut devices: BTreeMap<&str, Vec<&Arc<Parent>>> = BTreeMap::new();
    for parent in parents.parents() {
        if let Some(device) = physical_device(parent) {
            devices.entry(device).or_default().push(parent);
        }
    }
    devices
}

/// The `mdevreg_physical_device_creatable` samples of one physical device
/// shared by `members`: per type id, the first non-empty type name and the
/// sum of what each member can still create (the same sums as
/// `GetCapacity`), in type id order.
fn encode_device(
    family: &mut MetricEncoder,
    device: &str,
    members: &[&Arc<Parent>],
) -> fmt::Result {
    let mut creatable: BTreeMap<&str, (&str, u64)> = BTreeMap::new();
    for parent in members {
        for mdev_type in &parent.info.types {
            let entry = creatable
                .entry(mdev_type.id.as_str())
                .or_insert((mdev_type.name.as_str(), 0));
            if entry.0.is_empty() {
                entry.0 = mdev_type.name.as_str();
            }
            entry.1 += u64::from(mdev_type.available_instances);
        }
    }
    for (type_id, (name, count)) in &creatable {
        let labels = [
            ("physical_device", device),
            ("type", type_id),
            ("name", name),
        ];
        family.encode_family(&labels)?.encode_gauge(count)?;
    }
    Ok(())
}

/// The families after the per-parent ones: the sequence number and the
/// build.
fn encode_tail(seqnum: u64, encoder: &mut DescriptorEncoder) -> fmt::Result {
    encoder
        .encode_descriptor(
            "mdevreg_registry_seqnum",
            help::SEQNUM,
            None,
            MetricType::Gauge,
        )?
        .encode_gauge(&seqnum)?;
    encoder
        .encode_descriptor(
            "mdevreg_build_info",
            help::BUILD_INFO,
            None,
            MetricType::Gauge,
        )?
        .encode_family(&[("version", VERSION)])?
        .encode_gauge(&1u32)
}

/// Encodes the registry families of `parents` into `encoder`, whole.
fn encode_registry(parents: &dyn Parents, encoder: &mut DescriptorEncoder) -> fmt::Result {
    for kind in Family::PER_PARENT {
        let mut family = kind.descriptor(encoder)?;
        for parent in parents.parents() {
            kind.encode_parent(&mut family, parent)?;
        }
    }
    let devices = physical_devices(parents);
    let mut family = Family::Creatable.descriptor(encoder)?;
    for (device, members) in &devices {
        encode_device(&mut family, device, members)?;
    }
    encode_tail(parents.seqnum(), encoder)
}

/// One fragment of the registry part: what [`super::cache`] keeps.
#[derive(Debug)]
pub enum Fragment {
    /// The `# HELP` and `# TYPE` lines of a family.
    Header(Family),
    /// The samples of some parents in each per-parent family.
    Parents(Vec<Arc<Parent>>),
    /// The `mdevreg_physical_device_creatable` samples of some physical
    /// devices, each with the parents sharing it.
    Devices(Vec<(String, Vec<Arc<Parent>>)>),
    /// The families after the per-parent ones, for a sequence number.
    Tail(u64),
}

impl Collector for Fragment {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> fmt::Result {
        match self {
            Fragment::Header(kind) => kind.descriptor(&mut encoder).map(drop),
            Fragment::Parents(parents) => {
                for kind in Family::PER_PARENT {
                    let mut family = kind.descriptor(&mut encoder)?;
                    for parent in parents {
                        kind.encode_parent(&mut family, parent)?;
                    }
                }
                Ok(())
            }
            Fragment::Devices(devices) => {
                let mut family = Family::Creatable.descriptor(&mut encoder)?;
                for (device, members) in devices {
                    let members: Vec<&Arc<Parent>> = members.iter().collect();
                    encode_device(&mut family, device, &members)?;
                }
                Ok(())
            }
            Fragment::Tail(seqnum) => encode_tail(*seqnum, &mut encoder),
        }
    }
}

/// The text format's header lines of each family (the same every time).
pub fn header(kind: Family) -> &'static str {
    static HEADERS: OnceLock<Vec<String>> = OnceLock::new();
    let headers = HEADERS.get_or_init(|| {
        Family::ALL
            .iter()
            .map(|&kind| encode_collector(Fragment::Header(kind), Format::Text, String::new()))
            .collect()
    });
    &headers[kind as usize]
}

/// `fragment` in the text format (a registry fragment is the same in
/// OpenMetrics: gauges only, see the tests), one chunk per family: a
/// header is its two lines; samples come without their family's header
/// (the crate only encodes whole families: they are encoded with it, then
/// cut off); a tail is whole. Parents come as one chunk per family for all
/// of them: see [`encode_parents`] for one per parent. `scratch` is reused
/// between calls. `None` if the crate's output did not have the expected
/// headers (never seen; the caller then renders whole).
pub fn encode_fragment(fragment: Fragment, scratch: &mut String) -> Option<Vec<Bytes>> {
    with_sections(fragment, scratch, |sections| {
        Some(
            sections
                .iter()
                .map(|section| Bytes::copy_from_slice(section.as_bytes()))
                .collect(),
        )
    })
}

/// Encodes `fragment` into `scratch` and calls `f` with its text cut into
/// the samples of each family (a header or a tail: the whole text).
fn with_sections<R>(
    fragment: Fragment,
    scratch: &mut String,
    f: impl FnOnce(&[&str]) -> Option<R>,
) -> Option<R> {
    let families: &[Family] = match &fragment {
        Fragment::Header(_) | Fragment::Tail(_) => &[],
        Fragment::Parents(_) => &Family::PER_PARENT,
        Fragment::Devices(_) => &[Family::Creatable],
    };
    scratch.clear();
    let text = encode_collector(fragment, Format::Text, std::mem::take(scratch));
    let result = if families.is_empty() {
        f(&[text.as_str()])
    } else {
        samples_by_family(&text, families).and_then(|sections| f(&sections))
    };
    *scratch = text;
    result
}

/// How many parents (or physical devices) one encoding takes: one
/// encoding costs a registry and an 8 KiB buffer of the crate. A render of
/// every parent of a 1000 × 32 host (`cargo bench --bench metrics`)
/// allocated 44 MiB encoding per parent and family, 28 MiB per parent,
/// 21 MiB with parents in batches, 15 MiB with devices in batches too (the
/// text itself is 9 MiB); CPU time stayed 27-35 ms, near a whole render.
pub const PER_ENCODING: usize = 64;

/// The samples of each of `parents` in each per-parent family
/// ([`Family::PER_PARENT`] order), encoded together and cut apart (see
/// [`cut_lines`]): a parent has one `mdevreg_parent_info` line and one line
/// per type in the other two. `None` if the text was not shaped so.
pub fn encode_parents(parents: Vec<Arc<Parent>>, scratch: &mut String) -> Option<Vec<[Bytes; 3]>> {
    let types: Vec<usize> = parents
        .iter()
        .map(|parent| parent.info.types.len())
        .collect();
    with_sections(Fragment::Parents(parents), scratch, |sections| {
        let [info, available, instances] = sections else {
            return None;
        };
        let info = cut_lines(info, types.iter().map(|_| 1))?;
        let available = cut_lines(available, types.iter().copied())?;
        let instances = cut_lines(instances, types.iter().copied())?;
        Some(
            info.into_iter()
                .zip(available)
                .zip(instances)
                .map(|((info, available), instances)| [info, available, instances])
                .collect(),
        )
    })
}

/// The `mdevreg_physical_device_creatable` samples of each of `devices`,
/// encoded together and cut apart (see [`cut_lines`]): one line per type
/// id among a device's parents. `None` if the text was not shaped so.
pub fn encode_devices(
    devices: Vec<(String, Vec<Arc<Parent>>)>,
    scratch: &mut String,
) -> Option<Vec<Bytes>> {
    let lines: Vec<usize> = devices
        .iter()
        .map(|(_, members)| {
            let ids: BTreeSet<&str> = members
                .iter()
                .flat_map(|parent| parent.info.types.iter().map(|t| t.id.as_str()))
                .collect();
            ids.len()
        })
        .collect();
    with_sections(Fragment::Devices(devices), scratch, |sections| {
        cut_lines(sections.first()?, lines.iter().copied())
    })
}

/// `section` cut into pieces of `lines` lines each, each piece a buffer of
/// its own (no fragment keeps a batch's text alive). Each sample is one
/// line: label values cannot hold a line break (escaped). `None` unless the
/// counts cover the section exactly.
fn cut_lines(section: &str, lines: impl Iterator<Item = usize>) -> Option<Vec<Bytes>> {
    let mut rest = section;
    let mut pieces = Vec::new();
    for count in lines {
        let mut end = 0;
        for _ in 0..count {
            // `str::find` of one ASCII character is a fast memchr.
            end += rest[end..].find('\n')? + 1;
        }
        pieces.push(Bytes::copy_from_slice(&rest.as_bytes()[..end]));
        rest = &rest[end..];
    }
    rest.is_empty().then_some(pieces)
}

/// `text`, the encoding of `families` one after the other, cut into the
/// samples of each. A family's samples end where a line starts with `#`:
/// sample lines start with the metric name, and label values cannot hold
/// a line break (escaped as `\n`).
fn samples_by_family<'t>(text: &'t str, families: &[Family]) -> Option<Vec<&'t str>> {
    let mut rest = text;
    let mut samples = Vec::with_capacity(families.len());
    for &kind in families {
        rest = rest.strip_prefix(header(kind))?;
        let end = if rest.starts_with('#') {
            0
        } else {
            rest.find("\n#").map_or(rest.len(), |at| at + 1)
        };
        samples.push(&rest[..end]);
        rest = &rest[end..];
    }
    rest.is_empty().then_some(samples)
}

/// The daemon's counters as the exposition shows them. Labelled counters
/// list every label value, zeros included, so that `rate()` sees a series
/// from the start.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CounterValues {
    /// Kernel uevents that passed the trust check.
    pub uevents_received: u64,
    /// Netlink messages dropped by the trust check, by reason.
    pub uevents_rejected: Vec<(&'static str, u64)>,
    /// Full sysfs rescans (overflow, SEQNUM gap, `Rescan()`).
    pub rescans: u64,
    /// Uevent receive buffer overflows.
    pub netlink_overflows: u64,
    /// Gaps in the kernel uevent SEQNUM sequence.
    pub uevent_seqnum_gaps: u64,
    /// Parent registrations, by source (`kernel`, `userspace`).
    pub registrations: Vec<(&'static str, u64)>,
    /// Parent unregistrations, by source.
    pub unregistrations: Vec<(&'static str, u64)>,
    /// Uevents emitted for userspace parents, by method (`inject`, `broadcast`).
    pub uevents_emitted: Vec<(&'static str, u64)>,
    /// Uevent emissions that failed.
    pub uevent_emit_failures: u64,
    /// State file saves that failed.
    pub state_save_failures: u64,
    /// Unix time of the last kernel uevent received, or of the start of
    /// listening; `None` when not listening.
    pub last_uevent_timestamp_seconds: Option<f64>,
}

impl CounterValues {
    fn encode(&self, encoder: &mut DescriptorEncoder) -> fmt::Result {
        let plain: [(&str, &str, u64); 6] = [
            (
                "mdevreg_uevents_received",
                "Kernel uevents received that passed the trust check",
                self.uevents_received,
            ),
            (
                "mdevreg_rescans",
                "Full sysfs rescans (receive buffer overflow, SEQNUM gap, Rescan call)",
                self.rescans,
            ),
            (
                "mdevreg_netlink_overflows",
                "Overflows of the kernel uevent receive buffer (events lost, then rescanned)",
                self.netlink_overflows,
            ),
            (
                "mdevreg_uevent_seqnum_gaps",
                "Gaps in the kernel uevent SEQNUM sequence (events lost, then rescanned)",
                self.uevent_seqnum_gaps,
            ),
            (
                "mdevreg_uevent_emit_failures",
                "Uevents for userspace parents that could not be emitted",
                self.uevent_emit_failures,
            ),
            (
                "mdevreg_state_save_failures",
                "State file saves that failed",
                self.state_save_failures,
            ),
        ];
        for (name, help, value) in plain {
            ConstCounter::new(value).encode(encoder.encode_descriptor(
                name,
                help,
                None,
                MetricType::Counter,
            )?)?;
        }
        let labelled: [LabelledCounter; 4] = [
            (
                "mdevreg_uevents_rejected",
                "Netlink messages dropped by the trust check, by reason",
                "reason",
                &self.uevents_rejected,
            ),
            (
                "mdevreg_registrations",
                "Parent registrations, by source",
                "source",
                &self.registrations,
            ),
            (
                "mdevreg_unregistrations",
                "Parent unregistrations, by source",
                "source",
                &self.unregistrations,
            ),
            (
                "mdevreg_uevents_emitted",
                "Uevents emitted for userspace parents, by method",
                "method",
                &self.uevents_emitted,
            ),
        ];
        for (name, help, label, values) in labelled {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (value_label, value) in values {
                ConstCounter::new(*value)
                    .encode(family.encode_family(&[(label, *value_label)])?)?;
            }
        }
        if let Some(seconds) = self.last_uevent_timestamp_seconds {
            encoder
                .encode_descriptor(
                    "mdevreg_last_uevent_timestamp_seconds",
                    "Unix time of the last kernel uevent received, or of the start of listening",
                    None,
                    MetricType::Gauge,
                )?
                .encode_gauge(&seconds)?;
        }
        Ok(())
    }
}

/// A labelled counter family: name, HELP, label name, values by label.
type LabelledCounter<'a> = (&'a str, &'a str, &'a str, &'a [(&'static str, u64)]);

/// What one encoding covers.
enum Part {
    Registry(Arc<dyn RegistryView>),
    Counters(CounterValues),
}

impl fmt::Debug for Part {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Part::Registry(_) => f.write_str("Part::Registry"),
            Part::Counters(values) => f.debug_tuple("Part::Counters").field(values).finish(),
        }
    }
}

/// The [`Collector`] handed to `prometheus-client`: one part, encoded on
/// demand. The sequence number seen by a registry encoding is left in
/// `seqnum`.
#[derive(Debug)]
struct PartCollector {
    part: Part,
    seqnum: Arc<Mutex<u64>>,
}

impl Collector for PartCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> fmt::Result {
        match &self.part {
            Part::Registry(view) => view.with_parents(&mut |parents| {
                *crate::dbus::lock(&self.seqnum) = parents.seqnum();
                encode_registry(parents, &mut encoder)
            }),
            Part::Counters(values) => values.encode(&mut encoder),
        }
    }
}

/// Encodes `collector` in `format` (without the OpenMetrics `# EOF`),
/// appending to `text`.
fn encode_collector(collector: impl Collector, format: Format, mut text: String) -> String {
    let mut registry = prometheus_client::registry::Registry::default();
    registry.register_collector(Box::new(collector));
    let encoded = match format {
        Format::Text => prometheus_client::encoding::prometheus_text::encode(&mut text, &registry),
        Format::OpenMetrics => {
            prometheus_client::encoding::text::encode_registry(&mut text, &registry)
        }
    };
    // Writing into a String cannot fail, and the collectors fail only when
    // the writer does.
    debug_assert!(encoded.is_ok());
    text
}

/// Encodes `part` in `format` (without the OpenMetrics `# EOF`) into a
/// string of at least `capacity`; returns it and the sequence number of a
/// registry part.
fn encode_part(part: Part, format: Format, capacity: usize) -> (String, u64) {
    let seqnum = Arc::new(Mutex::new(0));
    let collector = PartCollector {
        part,
        seqnum: Arc::clone(&seqnum),
    };
    let text = encode_collector(collector, format, String::with_capacity(capacity));
    let seqnum = *crate::dbus::lock(&seqnum);
    (text, seqnum)
}

/// The registry part alone and whole, in the text format (the gauges it
/// holds are written the same way in OpenMetrics, see the tests), and the
/// sequence number it shows. The reference the fragments are checked
/// against; the CLI prints it.
pub fn render_registry(view: Arc<dyn RegistryView>, capacity: usize) -> (String, u64) {
    encode_part(Part::Registry(view), Format::Text, capacity)
}

/// The counters part in `format`.
pub fn render_counters(values: &CounterValues, format: Format) -> String {
    encode_part(Part::Counters(values.clone()), format, 4096).0
}

/// The registry part of an exposition: chunks of text, shared (a scrape
/// takes a reference, not a copy), and the sequence number it shows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegistryPart {
    pub seqnum: u64,
    pub chunks: Arc<[Bytes]>,
    /// Total length in bytes.
    pub len: usize,
}

impl RegistryPart {
    pub fn new(seqnum: u64, chunks: Vec<Bytes>) -> RegistryPart {
        let len = chunks.iter().map(Bytes::len).sum();
        RegistryPart {
            seqnum,
            chunks: chunks.into(),
            len,
        }
    }

    /// The whole text in one buffer (tests).
    pub fn to_vec(&self) -> Vec<u8> {
        let mut all = Vec::with_capacity(self.len);
        for chunk in self.chunks.iter() {
            all.extend_from_slice(chunk);
        }
        all
    }
}

/// A complete exposition, as chunks to send or write one after the other:
/// the registry part (shared) then the rest (counters, `# EOF`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exposition {
    pub format: Format,
    pub registry: RegistryPart,
    pub rest: Vec<Bytes>,
}

impl Exposition {
    /// Every chunk, in order.
    pub fn chunks(&self) -> impl Iterator<Item = &Bytes> {
        self.registry.chunks.iter().chain(&self.rest)
    }

    /// The chunk at `index` of [`Exposition::chunks`].
    pub fn chunk(&self, index: usize) -> Option<&Bytes> {
        match index.checked_sub(self.registry.chunks.len()) {
            None => self.registry.chunks.get(index),
            Some(rest) => self.rest.get(rest),
        }
    }

    /// Total length in bytes.
    pub fn len(&self) -> usize {
        self.registry.len + self.rest.iter().map(Bytes::len).sum::<usize>()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The whole text in one buffer (tests, the CLI).
    pub fn to_vec(&self) -> Vec<u8> {
        let mut all = Vec::with_capacity(self.len());
        for chunk in self.chunks() {
            all.extend_from_slice(chunk);
        }
        all
    }

    /// An exposition of `registry`, the counters and in OpenMetrics the
    /// closing `# EOF`.
    pub fn new(
        registry: RegistryPart,
        counters: Option<&CounterValues>,
        format: Format,
    ) -> Exposition {
        let mut rest = Vec::with_capacity(2);
        if let Some(values) = counters {
            rest.push(Bytes::from(render_counters(values, format)));
        }
        if format == Format::OpenMetrics {
            rest.push(Bytes::from_static(b"# EOF\n"));
        }
        Exposition {
            format,
            registry,
            rest,
        }
    }
}

/// One exposition of `parents`, rendered whole and uncached (the CLI).
pub fn render(
    parents: Arc<dyn RegistryView>,
    counters: Option<&CounterValues>,
    format: Format,
) -> Exposition {
    let (text, seqnum) = render_registry(parents, 64 * 1024);
    Exposition::new(
        RegistryPart::new(seqnum, vec![Bytes::from(text)]),
        counters,
        format,
    )
}

#[cfg(test)]
mod tests;
