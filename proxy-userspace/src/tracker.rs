//! Change tracking: the last known Services and EndpointSlices, and which Services changed
//! since the last sync. Cheap and coalescing; building and writing happen at sync time, so a
//! change and its undo between two syncs cost nothing in the kernel.
use std::collections::{BTreeSet, HashMap};

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
    pub fn upsert_service(&mut self, service: Service) {
        let service = model::slim_service(service);
        let Some(name) = object_name(&service.metadata) else {
            return;
        };
        if self.services.get(&name).map(|s| &**s) == Some(&service) {
            return;
        }
        self.services.insert(name.clone(), Box::new(service));
        self.dirty.insert(name);
    }

    pub fn delete_service(&mut self, name: &ServiceName) {
        if self.services.remove(name).is_some() {
            self.dirty.insert(name.clone());
        }
    }

    /// Adds or replaces a slice already parsed (what the sources deliver).
    pub fn upsert_slice_entry(&mut self, entry: SliceEntry) {
        if self.slices.get(&entry.name) == Some(&entry) {
            return;
        }
        let name = entry.name.clone();
        let new_owner = entry.service.clone();
        if let Some(old) = self.slices.insert(name.clone(), entry) {
            self.unlink(&name, old.service);
        }
        if let Some(service) = new_owner {
            self.slices_of
                .entry(service.clone())
                .or_default()
                .insert(name);
            self.dirty.insert(service);
        }
    }

    pub fn delete_slice(&mut self, name: &SliceName) {
        if let Some(old) = self.slices.remove(name) {
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

    /// The Services changed since the last call, clearing the change set.
    pub fn take_changed(&mut self) -> Vec<ServiceName> {
        std::mem::take(&mut self.dirty).into_iter().collect()
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
