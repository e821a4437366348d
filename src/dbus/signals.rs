//! Turns registry events into the signals clients see: `ParentRegistered`
//! and `ParentUnregistered`, the ObjectManager's `InterfacesAdded` and
//! `InterfacesRemoved` for every parent and type object, and
//! `PropertiesChanged` for changed properties.
//!
//! Messages are built from the registry (under the event loop's read) and
//! sent afterwards, so no lock is held while writing to the bus. A new
//! parent's objects are announced (`InterfacesAdded`) before its
//! `ParentRegistered`, and a leaving parent's `ParentUnregistered` comes
//! before its `InterfacesRemoved`: a client mirroring the ObjectManager
//! finds the objects of every parent it is told about.

use zbus::{Connection, Message, ObjectPath};

use super::interfaces::{
    self, Emits, Object, MDEV_TYPE1, OBJECT_MANAGER, PARENT1, PROPERTIES, REGISTRY1,
};
use super::values::{self, IfaceMap, PropMap};
use crate::label;
use crate::model::{MdevType, Parent};
use crate::registry::{Event, EventKind, Registry};

/// `Parent1.Types`, sent on its own after type events.
const TYPES: &str = "Types";

/// The signals showing `events` (already applied to `registry`), in order,
/// ending with the root's `PropertiesChanged` (`Parents` invalidated) when
/// parents came or went.
pub fn build(registry: &Registry, events: &[Event]) -> Vec<Message> {
    let mut messages = Vec::new();
    if events.is_empty() {
        return messages;
    }
    let mut parents_changed = false;
    for event in events {
        let result = match &event.kind {
            EventKind::ParentRegistered { parent } => {
                parents_changed = true;
                added(&mut messages, parent).and_then(|()| {
                    registered(&mut messages, "ParentRegistered", parent, event.seqnum)
                })
            }
            EventKind::ParentUnregistered { parent } => {
                parents_changed = true;
                registered(&mut messages, "ParentUnregistered", parent, event.seqnum)
                    .and_then(|()| removed(&mut messages, parent))
            }
            EventKind::ParentUpdated { before, after } => {
                // `Types` changes come with the type events that follow.
                let names: Vec<&str> = interfaces::changed_values(
                    &PARENT1,
                    Object::Parent(before),
                    Object::Parent(after),
                )
                .into_iter()
                .filter(|name| *name != TYPES)
                .collect();
                changed(
                    &mut messages,
                    &label::parent_path(after.name()),
                    PARENT1.name,
                    values::only(values::parent_props(after), &names),
                    &[],
                )
            }
            EventKind::TypeAdded { parent, mdev_type } => {
                type_added(&mut messages, parent, mdev_type)
                    .and_then(|()| types_changed(&mut messages, registry, parent))
            }
            EventKind::TypeRemoved { parent, mdev_type } => signal(
                &mut messages,
                label::ROOT_PATH,
                OBJECT_MANAGER,
                "InterfacesRemoved",
                &(
                    path(&label::type_path(parent, &mdev_type.id)),
                    vec![MDEV_TYPE1.name],
                ),
            )
            .and_then(|()| types_changed(&mut messages, registry, parent)),
            EventKind::TypeUpdated {
                parent,
                before,
                after,
            } => {
                let names = interfaces::changed_values(
                    &MDEV_TYPE1,
                    Object::Type {
                        parent,
                        mdev_type: before,
                    },
                    Object::Type {
                        parent,
                        mdev_type: after,
                    },
                );
                changed(
                    &mut messages,
                    &label::type_path(parent, &after.id),
                    MDEV_TYPE1.name,
                    values::only(values::type_props(parent, after), &names),
                    &[],
                )
            }
        };
        if let Err(err) = result {
            log::warn!(
                "signals of event {} ({}) not built: {err}",
                event.seqnum,
                event.parent_name()
            );
        }
    }
    // Large values (`Parents`) are only named as invalidated. `SeqNum`
    // changes with every event and is not signalled: every registry signal
    // carries it.
    let invalidated: Vec<&str> = REGISTRY1
        .properties
        .iter()
        .filter(|p| parents_changed && p.emits == Emits::Invalidates)
        .map(|p| p.name)
        .collect();
    if let Err(err) = changed(
        &mut messages,
        label::ROOT_PATH,
        REGISTRY1.name,
        PropMap(Vec::new()),
        &invalidated,
    ) {
        log::warn!("root PropertiesChanged not built: {err}");
    }
    messages
}

/// Sends `messages` in order, written together (one wakeup of the bus for
/// a parent and all its type objects); a failure is logged, never fatal.
pub async fn send(connection: &Connection, messages: Vec<Message>) {
    if let Err(err) = connection.send_all(&messages).await {
        log::warn!("cannot send {} signals: {err}", messages.len());
    }
}

fn path(path: &str) -> ObjectPath<'_> {
    // Built from escaped labels: always valid.
    ObjectPath::try_from(path).unwrap_or_else(|_| ObjectPath::from_static_str_unchecked("/"))
}

fn signal<B>(
    messages: &mut Vec<Message>,
    object: &str,
    interface: &str,
    member: &str,
    body: &B,
) -> zbus::Result<()>
where
    B: serde::Serialize + zbus::DynamicType,
{
    messages.push(Message::signal(path(object), interface, member).build(body)?);
    Ok(())
}

fn registered(
    messages: &mut Vec<Message>,
    member: &str,
    parent: &Parent,
    seqnum: u64,
) -> zbus::Result<()> {
    let parent_path = label::parent_path(parent.name());
    signal(
        messages,
        label::ROOT_PATH,
        REGISTRY1.name,
        member,
        &(
            path(&parent_path),
            parent.name(),
            parent.source.as_str(),
            seqnum,
        ),
    )
}

/// `InterfacesAdded` for a parent and each of its types.
fn added(messages: &mut Vec<Message>, parent: &Parent) -> zbus::Result<()> {
    let parent_path = label::parent_path(parent.name());
    signal(
        messages,
        label::ROOT_PATH,
        OBJECT_MANAGER,
        "InterfacesAdded",
        &(path(&parent_path), values::parent_ifaces(parent)),
    )?;
    for mdev_type in &parent.info.types {
        type_added(messages, parent.name(), mdev_type)?;
    }
    Ok(())
}

fn type_added(messages: &mut Vec<Message>, parent: &str, mdev_type: &MdevType) -> zbus::Result<()> {
    let type_path = label::type_path(parent, &mdev_type.id);
    let ifaces: IfaceMap<'_> = values::type_ifaces(parent, mdev_type);
    signal(
        messages,
        label::ROOT_PATH,
        OBJECT_MANAGER,
        "InterfacesAdded",
        &(path(&type_path), ifaces),
    )
}

/// `InterfacesRemoved` for each type of a parent, then the parent.
fn removed(messages: &mut Vec<Message>, parent: &Parent) -> zbus::Result<()> {
    for mdev_type in &parent.info.types {
        signal(
            messages,
            label::ROOT_PATH,
            OBJECT_MANAGER,
            "InterfacesRemoved",
            &(
                path(&label::type_path(parent.name(), &mdev_type.id)),
                vec![MDEV_TYPE1.name],
            ),
        )?;
    }
    signal(
        messages,
        label::ROOT_PATH,
        OBJECT_MANAGER,
        "InterfacesRemoved",
        &(path(&label::parent_path(parent.name())), vec![PARENT1.name]),
    )
}

/// `PropertiesChanged` on `object`, unless nothing changed.
fn changed(
    messages: &mut Vec<Message>,
    object: &str,
    interface: &str,
    props: PropMap<'_>,
    invalidated: &[&str],
) -> zbus::Result<()> {
    if props.0.is_empty() && invalidated.is_empty() {
        return Ok(());
    }
    signal(
        messages,
        object,
        PROPERTIES,
        "PropertiesChanged",
        &(interface, props, invalidated),
    )
}

/// `PropertiesChanged` of a parent's `Types` (its current list).
fn types_changed(
    messages: &mut Vec<Message>,
    registry: &Registry,
    parent: &str,
) -> zbus::Result<()> {
    let Some(current) = registry.get(parent) else {
        return Ok(());
    };
    changed(
        messages,
        &label::parent_path(parent),
        PARENT1.name,
        values::only(values::parent_props(current), &[TYPES]),
        &[],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_properties_exist() {
        assert!(PARENT1.property(TYPES).is_some());
        let seqnum = REGISTRY1.property("SeqNum").expect("SeqNum");
        assert_eq!(
            seqnum.emits,
            Emits::Never,
            "every registry signal carries it"
        );
    }
}
