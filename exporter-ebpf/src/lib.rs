//! Empty library target: it lets `exporter/build.rs` depend on this crate so cargo
//! rebuilds the userspace when the eBPF sources change (aya-template's arrangement).
#![no_std]
