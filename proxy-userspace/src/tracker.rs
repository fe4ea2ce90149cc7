//! Change tracking: the last known Services and EndpointSlices, and which Services changed
//! since the last sync. Cheap and coalescing; building and writing happen at sync time, so a
//! change and its undo between two syncs cost nothing in the kernel. It also counts the
//! changes (kube-proxy's change metrics) and keeps the slices' trigger times until the sync
//! that programs them.
use std::{
    collections::{BTreeSet, HashMap},
    time::SystemTime,
};

use k8s_openapi::api::core::v1::Service;

use crate::model::{self, Built, ServiceError, ServiceName, SliceEntry, SliceRecord};

/// `namespace/name` of an EndpointSlice.
type SliceName = ServiceName;

#[derive(Default)]
pub struct Tracker {
    /// Boxed: a Service is large and the table holds thousands.
    services: HashMap<ServiceName, Box<Service>>,
    slices: HashMap<SliceName, SliceEntry>,
    slices_of: HashMap<ServiceName, BTreeSet<SliceName>>,
    dirty: BTreeSet<ServiceName>,
    changes: ChangeCounts,
    /// Services whose Service object changed since the last sync.
    services_changed: BTreeSet<ServiceName>,
    /// Per Service, the trigger times of its slices' changes since the last sync.
    trigger_times: HashMap<ServiceName, Vec<SystemTime>>,
    /// Trigger times from before this tracker existed are not ours to measure (kube-proxy's
    /// rule: a restart must not report the age of every slice as programming latency).
    started: Option<SystemTime>,
}

/// Changes seen (kube-proxy's `sync_proxy_rules_{service,endpoint}_changes_{total,pending}`).
/// A change is an object that differs from what the tracker held; an unchanged object sent
/// again (a relist, a manifest re-read) is not one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChangeCounts {
    pub service_changes: u64,
    pub endpoint_changes: u64,
    /// Services whose Service changed since the last sync.
    pub service_changes_pending: u64,
    /// Slice changes since the last sync.
    pub endpoint_changes_pending: u64,
}

pub fn object_name(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> Option<ServiceName> {
    Some(ServiceName::new(
        meta.namespace.as_deref(),
        meta.name.as_deref()?,
    ))
}

impl Tracker {
    /// A tracker that measures trigger times from `started` on.
    pub fn new(started: SystemTime) -> Self {
        Self {
            started: Some(started),
            ..Self::default()
        }
    }

    fn service_changed(&mut self, name: &ServiceName) {
        self.changes.service_changes += 1;
        self.services_changed.insert(name.clone());
        self.changes.service_changes_pending = self.services_changed.len() as u64;
        self.dirty.insert(name.clone());
    }

    fn endpoints_changed(&mut self) {
        self.changes.endpoint_changes += 1;
        self.changes.endpoint_changes_pending += 1;
    }

    pub fn upsert_service(&mut self, service: Service) {
        let service = model::slim_service(service);
        let Some(name) = object_name(&service.metadata) else {
            return;
        };
        if self.services.get(&name).map(|s| &**s) == Some(&service) {
            return;
        }
        self.services.insert(name.clone(), Box::new(service));
        self.service_changed(&name);
    }

    pub fn delete_service(&mut self, name: &ServiceName) {
        if self.services.remove(name).is_some() {
            self.service_changed(name);
        }
    }

    /// Adds or replaces a slice already parsed (what the sources deliver). A new trigger time
    /// alone is no change.
    pub fn upsert_slice_entry(&mut self, entry: SliceEntry) {
        if self
            .slices
            .get(&entry.name)
            .is_some_and(|old| old.service == entry.service && old.record == entry.record)
        {
            return;
        }
        self.endpoints_changed();
        let name = entry.name.clone();
        let new_owner = entry.service.clone();
        let trigger_time = entry
            .trigger_time
            .filter(|t| self.started.is_none_or(|started| *t > started));
        if let Some(old) = self.slices.insert(name.clone(), entry) {
            self.unlink(&name, old.service);
        }
        if let Some(service) = new_owner {
            if let Some(time) = trigger_time {
                self.trigger_times
                    .entry(service.clone())
                    .or_default()
                    .push(time);
            }
            self.slices_of
                .entry(service.clone())
                .or_default()
                .insert(name);
            self.dirty.insert(service);
        }
    }

    pub fn delete_slice(&mut self, name: &SliceName) {
        if let Some(old) = self.slices.remove(name) {
            self.endpoints_changed();
            // A deleted slice's annotation is the time of its last update, not of this
            // change: nothing of the Service is measured (kube-proxy's rule).
            if let Some(service) = &old.service {
                self.trigger_times.remove(service);
            }
            self.unlink(name, old.service);
        }
    }

    fn unlink(&mut self, slice: &SliceName, service: Option<ServiceName>) {
        let Some(service) = service else { return };
        if let Some(set) = self.slices_of.get_mut(&service) {
            set.remove(slice);
            if set.is_empty() {
                self.slices_of.remove(&service);
            }
        }
        self.dirty.insert(service);
    }

    /// Replaces the Services with a complete list (an API list or relist): Services absent
    /// from it are deleted, unchanged ones stay clean.
    pub fn replace_services(&mut self, services: Vec<Service>) {
        let names: BTreeSet<_> = services
            .iter()
            .filter_map(|s| object_name(&s.metadata))
            .collect();
        let gone: Vec<_> = self
            .services
            .keys()
            .filter(|n| !names.contains(*n))
            .cloned()
            .collect();
        for name in gone {
            self.delete_service(&name);
        }
        services.into_iter().for_each(|s| self.upsert_service(s));
    }

    /// Replaces the EndpointSlices with a complete list of parsed slices.
    pub fn replace_slice_entries(&mut self, slices: Vec<SliceEntry>) {
        let names: BTreeSet<_> = slices.iter().map(|s| s.name.clone()).collect();
        let gone: Vec<_> = self
            .slices
            .keys()
            .filter(|n| !names.contains(*n))
            .cloned()
            .collect();
        for name in gone {
            self.delete_slice(&name);
        }
        slices.into_iter().for_each(|s| self.upsert_slice_entry(s));
    }

    /// Marks every Service changed (a full resync rebuilds all of them).
    pub fn mark_all_dirty(&mut self) {
        self.dirty.extend(self.services.keys().cloned());
    }

    pub fn has_changes(&self) -> bool {
        !self.dirty.is_empty()
    }

    /// The Services changed since the last call, clearing the change set (and the pending
    /// counts: what is taken is being programmed).
    pub fn take_changed(&mut self) -> Vec<ServiceName> {
        self.services_changed.clear();
        self.changes.service_changes_pending = 0;
        self.changes.endpoint_changes_pending = 0;
        std::mem::take(&mut self.dirty).into_iter().collect()
    }

    /// The trigger times of the slice changes of `services` (taken: each is measured once).
    pub fn take_trigger_times(&mut self, services: &[ServiceName]) -> Vec<SystemTime> {
        services
            .iter()
            .filter_map(|s| self.trigger_times.remove(s))
            .flatten()
            .collect()
    }

    pub fn change_counts(&self) -> ChangeCounts {
        self.changes
    }

    /// Builds the model of one Service from what is known now (`None`: it is gone).
    pub fn build(&self, name: &ServiceName) -> Option<Result<Built, ServiceError>> {
        self.services.get(name).map(|service| {
            let slices: Vec<&SliceRecord> = self
                .slices_of
                .get(name)
                .into_iter()
                .flatten()
                .filter_map(|s| self.slices.get(s).map(|e| &e.record))
                .collect();
            model::service_ports_from_records(service, &slices)
        })
    }
}
