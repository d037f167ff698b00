//! The one layer that reads or changes the machine: netlink sockets
//! (rtnetlink, nfnetlink, event subscriptions), entering namespaces, the
//! `nft` and `conntrack` processes, sysctl writes and the files headcni
//! keeps or reads. Everything above it plans with plain data; only here
//! does a call reach the kernel.

pub mod files;
pub mod netlink;
pub mod nft;
pub mod sysctl;
