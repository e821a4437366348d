//! `org.mdevreg.MdevType1`: one object per type of a registered parent,
//! read-only; updated in place by the event loop like `Parent1`.

use std::sync::{Arc, Mutex};

use zbus::OwnedObjectPath;

use super::lock;
use crate::model::MdevType;

/// The `org.mdevreg.MdevType1` interface. Clones share the data.
#[derive(Clone, Debug)]
pub struct MdevType1 {
    parent_path: OwnedObjectPath,
    data: Arc<Mutex<MdevType>>,
}

impl MdevType1 {
    pub fn new(parent_path: OwnedObjectPath, mdev_type: MdevType) -> MdevType1 {
        MdevType1 {
            parent_path,
            data: Arc::new(Mutex::new(mdev_type)),
        }
    }

    /// A copy of the current data.
    pub fn data(&self) -> MdevType {
        lock(&self.data).clone()
    }

    /// Replaces the data (the caller then signals what changed).
    pub fn set_data(&self, mdev_type: MdevType) {
        *lock(&self.data) = mdev_type;
    }
}

#[zbus::interface(
    name = "org.mdevreg.MdevType1",
    proxy(default_service = "org.mdevreg.Registry1")
)]
impl MdevType1 {
    /// Type id, e.g. `i915-GVTg_V5_4`.
    #[zbus(property(emits_changed_signal = "const"))]
    fn id(&self) -> String {
        lock(&self.data).id.clone()
    }

    /// Human-readable name, empty if none.
    #[zbus(property)]
    fn name(&self) -> String {
        lock(&self.data).name.clone()
    }

    /// Description, empty if none.
    #[zbus(property)]
    fn description(&self) -> String {
        lock(&self.data).description.clone()
    }

    /// VFIO device API, e.g. `vfio-pci`.
    #[zbus(property, name = "DeviceApi")]
    fn device_api(&self) -> String {
        lock(&self.data).device_api.clone()
    }

    /// How many more instances can be created.
    #[zbus(property)]
    fn available_instances(&self) -> u32 {
        lock(&self.data).available_instances
    }

    /// UUIDs of the mdev instances of this type.
    #[zbus(property)]
    fn devices(&self) -> Vec<String> {
        lock(&self.data).devices.clone()
    }

    /// Object path of the parent.
    #[zbus(property(emits_changed_signal = "const"))]
    fn parent(&self) -> OwnedObjectPath {
        self.parent_path.clone()
    }
}
