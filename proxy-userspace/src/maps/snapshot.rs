//! What one family's maps hold, read as a whole: the invariant the datapath relies on (a
//! visible slot 0 always names `count` present slots, each naming a present backend, and a
//! present reverse-NAT entry), and what a packet to each frontend sees. One implementation for
//! the in-memory twin (checked after every operation), the tests, and `twinstack bpf service
//! list` over the kernel maps.
use std::collections::BTreeMap;

use proxy_common::ServiceValue;

use super::{FrontendAddress, SlotKey, codec};
use crate::{
    family::Address,
    plan::{Backend, Frontend},
};

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LbSnapshot<A> {
    pub services: BTreeMap<SlotKey<A>, ServiceValue>,
    pub backends: BTreeMap<u32, Backend<A>>,
    pub reverse_nat: BTreeMap<u32, FrontendAddress<A>>,
}

/// What a packet to one frontend entry sees.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved<A> {
    pub frontend: Frontend<A>,
    /// Slot 0, decoded.
    pub head: codec::Head,
    pub rev_nat_id: u32,
    /// What replies are restored to (`None`: the reverse-NAT entry is missing).
    pub reverse_nat: Option<FrontendAddress<A>>,
    /// Slots 1..=count in order: the slot's backend id (0 when the slot is missing) and the
    /// backend (`None` when missing).
    pub slots: Vec<(u32, Option<Backend<A>>)>,
}

impl<A: Copy> Resolved<A> {
    /// The backends a packet can be sent to, in slot order; `None` unless every slot is whole.
    pub fn backends(&self) -> Option<Vec<Backend<A>>> {
        self.slots.iter().map(|(_, b)| *b).collect()
    }
}

impl<A: Address> LbSnapshot<A> {
    /// Every visible frontend entry (those with a slot 0), in key order.
    pub fn resolve(&self) -> Vec<Resolved<A>> {
        self.services
            .iter()
            .filter(|(key, _)| key.slot == 0)
            .map(|(key, head)| Resolved {
                frontend: key.frontend,
                head: codec::decode_head(head),
                rev_nat_id: head.rev_nat_id,
                reverse_nat: self.reverse_nat.get(&head.rev_nat_id).copied(),
                slots: (1..=head.count)
                    .map(|slot| {
                        let id = self
                            .services
                            .get(&SlotKey::new(key.frontend, slot))
                            .map(|v| v.backend_id)
                            .unwrap_or(0);
                        (id, self.backends.get(&id).copied())
                    })
                    .collect(),
            })
            .collect()
    }

    /// What a packet to each whole frontend entry is sent to: its backends in slot order.
    /// Frontends with a missing slot or backend are left out ([`Self::half_written`] names
    /// them).
    pub fn served(&self) -> BTreeMap<Frontend<A>, Vec<Backend<A>>> {
        self.resolve()
            .into_iter()
            .filter_map(|r| Some((r.frontend, r.backends()?)))
            .collect()
    }

    /// [`Self::served`] without the cluster IPs' unexposed-port frontends (port 0, no backend:
    /// see `plan::unexposed`): the Service ports alone.
    pub fn served_ports(&self) -> BTreeMap<Frontend<A>, Vec<Backend<A>>> {
        let mut served = self.served();
        served.retain(|frontend, _| frontend.port != crate::plan::UNEXPOSED_PORT);
        served
    }

    /// Each way a packet could see half a service now (empty: none).
    pub fn half_written(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for (key, head) in self.services.iter().filter(|(k, _)| k.slot == 0) {
            let frontend = key.frontend;
            if !self.reverse_nat.contains_key(&head.rev_nat_id) {
                problems.push(format!(
                    "{frontend} names missing reverse NAT {}",
                    head.rev_nat_id
                ));
            }
            for slot in 1..=head.count {
                match self.services.get(&SlotKey::new(frontend, slot)) {
                    None => {
                        problems.push(format!("{frontend} slot {slot} of {} missing", head.count))
                    }
                    Some(v) if !self.backends.contains_key(&v.backend_id) => {
                        problems.push(format!(
                            "{frontend} slot {slot} names missing backend {}",
                            v.backend_id
                        ))
                    }
                    Some(_) => {}
                }
            }
        }
        problems
    }
}
