//! The uevent sink of mdevregd: one kobject uevent per registration and
//! unregistration of a *userspace* parent (SPEC §4), by kernel injection when
//! permitted, else as a libudev-format broadcast on group 2 tagged `mdevreg`.
//! The mode is chosen once at startup ([`UeventSink::open`]) and logged.

use std::fmt;
use std::io;

use crate::cli::EmitMode;
use crate::model::{Parent, Source};
use crate::netlink::UeventEmitter;
use crate::uevent::Uevent;

/// Tag added to broadcast events, for `TAG+=`-free udev rules and
/// `udevadm monitor --tag-match=mdevreg`.
pub const TAG: &str = "mdevreg";
/// Environment key carrying the registry sequence number of the transition;
/// also how mdevregd recognises its own injected events coming back.
pub const SEQNUM_KEY: &str = "MDEVREG_SEQNUM";

/// `MDEV_STATE` of an emitted event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MdevState {
    Registered,
    Unregistered,
}

impl MdevState {
    pub fn as_str(self) -> &'static str {
        match self {
            MdevState::Registered => "registered",
            MdevState::Unregistered => "unregistered",
        }
    }
}

/// How events actually go out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ActiveMode {
    /// Kernel injection: the kernel numbers the event and broadcasts it on
    /// group 1 of this network namespace; udevd processes it.
    Inject,
    /// libudev-format multicast on group 2, as udevd would send it.
    Broadcast,
    /// Nothing is emitted.
    None,
}

impl fmt::Display for ActiveMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ActiveMode::Inject => "inject",
            ActiveMode::Broadcast => "broadcast",
            ActiveMode::None => "none",
        })
    }
}

/// What [`UeventSink::emit`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Emitted {
    /// Injected: expect it back on group 1 with this `MDEVREG_SEQNUM`.
    Injected,
    Broadcast,
    /// Not emitted: mode `none`, or the parent is a kernel parent.
    Nothing,
}

/// Emits uevents for userspace transitions.
pub struct UeventSink {
    mode: ActiveMode,
    /// Whether a refused injection may fall back to a broadcast (`auto`).
    may_fall_back: bool,
    emitter: Option<UeventEmitter>,
}

impl UeventSink {
    /// Opens the sink for `requested`:
    /// - `none`: nothing is opened;
    /// - `inject`: fails unless injection is permitted here;
    /// - `broadcast`: group-2 broadcast (needs CAP_NET_ADMIN at send time);
    /// - `auto`: injection if permitted, else broadcast; if no netlink socket
    ///   can be opened at all, nothing (with a warning).
    ///
    /// Probing injection makes the kernel skip one SEQNUM: open the sink
    /// before the uevent listener.
    pub fn open(requested: EmitMode) -> io::Result<UeventSink> {
        let (mode, emitter) = match requested {
            EmitMode::None => (ActiveMode::None, None),
            EmitMode::Broadcast => (ActiveMode::Broadcast, Some(UeventEmitter::open()?)),
            EmitMode::Inject => {
                let mut emitter = UeventEmitter::open()?;
                if !emitter.probe_injection()? {
                    return Err(io::Error::new(
                        io::ErrorKind::PermissionDenied,
                        "uevent injection is not permitted here (needs CAP_SYS_ADMIN over the \
                         network namespace and Linux >= 4.18); use --emit auto or broadcast",
                    ));
                }
                (ActiveMode::Inject, Some(emitter))
            }
            EmitMode::Auto => match UeventEmitter::open() {
                Ok(mut emitter) => match emitter.probe_injection() {
                    Ok(true) => (ActiveMode::Inject, Some(emitter)),
                    Ok(false) => (ActiveMode::Broadcast, Some(emitter)),
                    Err(err) => {
                        log::warn!("cannot probe uevent injection ({err}); broadcasting instead");
                        (ActiveMode::Broadcast, Some(emitter))
                    }
                },
                Err(err) => {
                    log::warn!("cannot open a uevent socket ({err}); emitting no uevents");
                    (ActiveMode::None, None)
                }
            },
        };
        Ok(UeventSink {
            mode,
            may_fall_back: requested == EmitMode::Auto,
            emitter,
        })
    }

    /// A sink that emits nothing.
    pub fn none() -> UeventSink {
        UeventSink {
            mode: ActiveMode::None,
            may_fall_back: false,
            emitter: None,
        }
    }

    pub fn mode(&self) -> ActiveMode {
        self.mode
    }

    /// A line for the startup log.
    pub fn describe(&self) -> String {
        match self.mode {
            ActiveMode::Inject => {
                "uevents for userspace parents: kernel injection (group 1, kernel SEQNUM)".into()
            }
            ActiveMode::Broadcast => {
                format!("uevents for userspace parents: libudev broadcast (group 2, tag {TAG})")
            }
            ActiveMode::None => "uevents for userspace parents: none (D-Bus signals only)".into(),
        }
    }

    /// Emits the uevent of `parent` entering `state` as registry event
    /// `seqnum`. Kernel parents get nothing (the kernel sent theirs). In
    /// `auto` mode a refused injection switches to broadcasting for good,
    /// and a refused broadcast to emitting nothing.
    pub fn emit(&mut self, parent: &Parent, state: MdevState, seqnum: u64) -> io::Result<Emitted> {
        if parent.source != Source::Userspace {
            return Ok(Emitted::Nothing);
        }
        let Some(emitter) = self.emitter.as_mut() else {
            return Ok(Emitted::Nothing);
        };
        let event = event_for(parent, state, seqnum);
        let result = match self.mode {
            ActiveMode::None => return Ok(Emitted::Nothing),
            ActiveMode::Broadcast => broadcast(emitter, event, seqnum),
            ActiveMode::Inject => match emitter.inject(&event) {
                Ok(()) => Ok(Emitted::Injected),
                Err(err) if self.may_fall_back && is_refusal(&err) => {
                    log::warn!("uevent injection refused ({err}); broadcasting from now on");
                    self.mode = ActiveMode::Broadcast;
                    broadcast(emitter, event, seqnum)
                }
                Err(err) => Err(err),
            },
        };
        match result {
            // `auto` without the privilege to broadcast (a daemon run by a
            // normal user): said once, then D-Bus signals only.
            Err(err) if self.may_fall_back && is_refusal(&err) => {
                log::warn!(
                    "uevent broadcast refused ({err}; needs CAP_NET_ADMIN); emitting no uevents \
                     from now on (D-Bus signals only)"
                );
                self.mode = ActiveMode::None;
                self.emitter = None;
                Ok(Emitted::Nothing)
            }
            other => other,
        }
    }
}

/// The event of SPEC §4 (without SEQNUM: the kernel or the broadcast adds it).
pub fn event_for(parent: &Parent, state: MdevState, seqnum: u64) -> Uevent {
    Uevent::new("change", parent.info.devpath.clone())
        .with("SUBSYSTEM", parent.info.subsystem.clone())
        .with("MDEV_STATE", state.as_str())
        .with("MDEV_PARENT", parent.name())
        .with(SEQNUM_KEY, seqnum.to_string())
}

/// libudev receivers need a non-zero SEQNUM: the registry's.
fn broadcast(emitter: &UeventEmitter, mut event: Uevent, seqnum: u64) -> io::Result<Emitted> {
    event.set("SEQNUM", seqnum.max(1).to_string());
    emitter.broadcast_libudev(&event, &[TAG])?;
    Ok(Emitted::Broadcast)
}

fn is_refusal(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(nix::libc::EPERM) | Some(nix::libc::ECONNREFUSED)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Lifetime, ParentInfo};

    fn parent(source: Source) -> Parent {
        Parent {
            info: ParentInfo {
                name: "vgpu0".into(),
                devpath: "/devices/virtual/mdevreg/vgpu0".into(),
                subsystem: "mdevreg".into(),
                driver: String::new(),
                backend: Default::default(),
                physical_device: String::new(),
                types: Vec::new(),
            },
            source,
            owner: ":1.4".into(),
            lifetime: Lifetime::Owner,
            registered_seqnum: 7,
            uid: 0,
        }
    }

    #[test]
    fn event_has_the_spec_environment() {
        let event = event_for(&parent(Source::Userspace), MdevState::Registered, 7);
        assert_eq!(event.action, "change");
        assert_eq!(event.devpath, "/devices/virtual/mdevreg/vgpu0");
        let env: Vec<(&str, &str)> = event
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            env,
            [
                ("ACTION", "change"),
                ("DEVPATH", "/devices/virtual/mdevreg/vgpu0"),
                ("SUBSYSTEM", "mdevreg"),
                ("MDEV_STATE", "registered"),
                ("MDEV_PARENT", "vgpu0"),
                ("MDEVREG_SEQNUM", "7"),
            ]
        );
        assert_eq!(event.seqnum(), None);
        // Encodable both ways.
        crate::uevent::encode_injection(&event, 1).unwrap();
        let mut numbered = event.clone();
        numbered.set("SEQNUM", "7");
        crate::uevent::encode_libudev(&numbered, &[TAG]).unwrap();
    }

    #[test]
    fn longest_valid_registration_still_encodes() {
        use crate::dbus::validate::{MAX_DEVPATH_BYTES, MAX_KERNEL_NAME_BYTES};
        assert_eq!(MAX_DEVPATH_BYTES, "/devices/".len() + 503);
        assert_eq!(MAX_KERNEL_NAME_BYTES, 255);
        let mut long = parent(Source::Userspace);
        long.info.name = "n".repeat(255);
        long.info.devpath = format!("/devices/{}", "d".repeat(503));
        long.info.subsystem = "s".repeat(255);
        let event = event_for(&long, MdevState::Unregistered, u64::MAX);
        crate::uevent::encode_injection(&event, 1).unwrap();
        let mut numbered = event;
        numbered.set("SEQNUM", u64::MAX.to_string());
        crate::uevent::encode_libudev(&numbered, &[TAG]).unwrap();
    }

    #[test]
    fn none_and_kernel_parents_emit_nothing() {
        let mut sink = UeventSink::none();
        assert_eq!(sink.mode(), ActiveMode::None);
        let emitted = sink
            .emit(&parent(Source::Userspace), MdevState::Registered, 1)
            .unwrap();
        assert_eq!(emitted, Emitted::Nothing);
        let mut sink = UeventSink::open(EmitMode::None).unwrap();
        let emitted = sink
            .emit(&parent(Source::Kernel), MdevState::Registered, 1)
            .unwrap();
        assert_eq!(emitted, Emitted::Nothing);
        assert!(sink.describe().contains("none"));
    }
}
