//! Property tests: parse -> render -> parse is the identity, for generated
//! models with hostile names and for arbitrary input strings.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use extstorage_uri::{
    Curl, CurlScheme, DiskOptions, Gluster, GlusterServer, Host, HostKeyCheck, Iscsi,
    IscsiTransport, Nbd, NbdServer, Nfs, Rbd, Secret, Server, Source, Ssh, render_blockdev,
    render_drive, split_opts,
};
use proptest::prelude::*;
use serde_json::Value;

/// Names built from the characters that break string-concatenating tools,
/// plus arbitrary unicode.
fn hostile() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-zA-Z0-9,:;@=\\\\/ ?&%#'\"\\[\\]{}é日🦀.~_-]{1,16}",
        any::<String>().prop_filter("no NUL, non-empty", |s| !s.is_empty() && !s.contains('\0')),
    ]
}

fn abs_path() -> impl Strategy<Value = String> {
    hostile().prop_map(|s| format!("/{s}"))
}

fn host() -> impl Strategy<Value = Host> {
    prop_oneof![
        "[a-z][a-z0-9-]{0,8}(\\.[a-z0-9_]{1,6}){0,2}".prop_map(Host::Name),
        any::<Ipv4Addr>().prop_map(|a| Host::Ip(IpAddr::V4(a))),
        any::<Ipv6Addr>().prop_map(|a| Host::Ip(IpAddr::V6(a))),
    ]
}

fn server() -> impl Strategy<Value = Server> {
    (host(), proptest::option::of(1u16..)).prop_map(|(host, port)| Server { host, port })
}

fn rbd() -> impl Strategy<Value = Rbd> {
    let names = (
        hostile(),
        proptest::option::of(hostile()),
        hostile(),
        proptest::option::of(hostile()),
    );
    let opts = (
        proptest::option::of(hostile().prop_map(|c| c.replace([',', ';', ' ', '\t'], "_"))),
        proptest::option::of(hostile()),
        proptest::collection::vec(server(), 0..3),
        proptest::sample::subsequence(vec!["cephx".to_string(), "none".to_string()], 0..=2),
        proptest::collection::vec(
            (
                "[a-z_]{1,10}".prop_filter("reserved", |k| {
                    !matches!(
                        k.as_str(),
                        "conf"
                            | "id"
                            | "key"
                            | "mon_host"
                            | "auth_supported"
                            | "auth_client_required"
                    )
                }),
                prop_oneof![hostile(), Just(String::new())],
            ),
            0..3,
        ),
    );
    (names, opts).prop_map(
        |((pool, namespace, image, snapshot), (conf, user, mon_hosts, auth, options))| Rbd {
            pool,
            namespace,
            image,
            snapshot,
            conf,
            user,
            mon_hosts,
            auth_client_required: auth,
            key: None,
            options,
        },
    )
}

fn iscsi_word() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9.:_-]{1,20}"
}

fn source() -> impl Strategy<Value = Source> {
    prop_oneof![
        abs_path().prop_map(|path| Source::File { path }),
        abs_path().prop_map(|path| Source::HostDevice { path }),
        rbd().prop_map(Source::Rbd),
        (
            prop_oneof![
                server().prop_map(GlusterServer::Tcp),
                abs_path().prop_map(GlusterServer::Unix)
            ],
            "[a-zA-Z0-9_-]{1,12}",
            hostile().prop_map(|p| p.trim_start_matches('/').to_string() + "x"),
        )
            .prop_map(|(server, volume, path)| Source::Gluster(Gluster {
                server,
                volume,
                path
            })),
        (
            any::<bool>(),
            server(),
            iscsi_word(),
            any::<u32>(),
            proptest::option::of(iscsi_word())
        )
            .prop_map(|(iser, portal, target, lun, user)| Source::Iscsi(Iscsi {
                transport: if iser {
                    IscsiTransport::Iser
                } else {
                    IscsiTransport::Tcp
                },
                portal,
                target,
                lun,
                user,
                password: None,
                initiator_name: None,
            })),
        (
            prop_oneof![
                server().prop_map(NbdServer::Tcp),
                abs_path().prop_map(NbdServer::Unix)
            ],
            proptest::option::of(hostile())
        )
            .prop_map(|(server, export)| Source::Nbd(Nbd { server, export })),
        (
            host(),
            abs_path(),
            proptest::option::of(any::<u32>()),
            proptest::option::of(any::<u32>()),
            proptest::option::of(any::<u64>()),
        )
            .prop_map(|(h, path, uid, gid, readahead)| Source::Nfs(Nfs {
                host: Some(h),
                path,
                uid,
                gid,
                readahead,
                ..Nfs::default()
            })),
        (
            server(),
            proptest::option::of(hostile()),
            abs_path(),
            proptest::option::of(prop_oneof![
                Just(HostKeyCheck::No),
                Just(HostKeyCheck::KnownHosts),
                "[0-9a-f:]{2,40}".prop_map(HostKeyCheck::Sha256),
                "[0-9a-f]{32}".prop_map(HostKeyCheck::Md5),
            ])
        )
            .prop_map(|(server, user, path, host_key_check)| Source::Ssh(Ssh {
                server,
                user,
                path,
                host_key_check
            })),
        (
            prop_oneof![
                Just(CurlScheme::Http),
                Just(CurlScheme::Https),
                Just(CurlScheme::Ftp),
                Just(CurlScheme::Ftps)
            ],
            server(),
            proptest::option::of(hostile()),
            "/[a-zA-Z0-9/._~%?=&:@é-]{0,20}",
        )
            .prop_map(|(scheme, server, user, path)| Source::Curl(Curl {
                scheme,
                server,
                user,
                password: None,
                path,
                sslverify: None,
                readahead: None,
                timeout: None,
            })),
    ]
}

fn without_secrets(mut s: Source) -> Source {
    match &mut s {
        Source::Rbd(r) => r.key = None,
        Source::Iscsi(i) => i.password = None,
        Source::Curl(c) => c.password = None,
        _ => {}
    }
    s
}

fn read_only_if_needed(src: &Source) -> DiskOptions {
    let needs =
        matches!(src, Source::Curl(_)) || matches!(src, Source::Rbd(r) if r.snapshot.is_some());
    DiskOptions {
        read_only: needs,
        secret_dir: Some("/run/secrets".into()),
        ..DiskOptions::default()
    }
}

/// Inputs that reach deep into each parser: a protocol prefix and a tail of
/// hostile characters.
fn legacy_input() -> impl Strategy<Value = String> {
    let prefix = prop_oneof![
        Just("rbd:"),
        Just("rbd:pool/"),
        Just("nbd://"),
        Just("nbd:"),
        Just("nbd+unix:///"),
        Just("gluster://"),
        Just("gluster+unix:///"),
        Just("iscsi://"),
        Just("nfs://"),
        Just("ssh://"),
        Just("https://"),
        Just("/"),
        Just("file:"),
        Just(""),
    ];
    (prefix, "[a-z0-9,:;@=\\\\/ ?&%#\\[\\]é.-]{0,30}").prop_map(|(p, t)| format!("{p}{t}"))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn model_render_parse_identity(src in source()) {
        let legacy = src.to_legacy().unwrap();
        prop_assert_eq!(Source::parse_legacy(&legacy).unwrap(), src.clone(), "via {}", legacy);
    }

    #[test]
    fn drive_string_carries_the_source(src in source()) {
        let opts = read_only_if_needed(&src);
        let drive = render_drive(&src, &opts, "d0").unwrap().drive;
        let pairs = split_opts(&drive).unwrap();
        prop_assert_eq!(&pairs[0].0, "file");
        prop_assert_eq!(Source::parse_legacy(&pairs[0].1).unwrap(), src);
        for (k, _) in &pairs[1..] {
            prop_assert!(
                ["format", "if", "id", "cache", "discard", "read-only"].contains(&k.as_str())
                    || k.starts_with("file."),
                "unexpected key {} in {}", k, drive
            );
        }
    }

    #[test]
    fn parse_never_panics_and_reparses(input in legacy_input()) {
        if let Ok(src) = Source::parse_legacy(&input) {
            let legacy = src.to_legacy().unwrap();
            prop_assert_eq!(Source::parse_legacy(&legacy).unwrap(), without_secrets(src));
        }
    }

    #[test]
    fn arbitrary_text_never_panics(input in any::<String>()) {
        let _ = Source::parse_legacy(&input);
        let _ = extstorage_uri::parse_attach_line(&input);
    }

    #[test]
    fn blockdev_is_json_with_exact_names(src in source()) {
        let opts = read_only_if_needed(&src);
        match render_blockdev(&src, &opts, "d0") {
            Ok(args) => {
                prop_assert_eq!(args.json_nodes.len(), 2);
                let proto: Value = serde_json::from_str(&args.json_nodes[0]).unwrap();
                let raw: Value = serde_json::from_str(&args.json_nodes[1]).unwrap();
                prop_assert_eq!(&proto["driver"], src.driver());
                prop_assert_eq!(&raw["file"], "d0-file");
                match &src {
                    Source::File { path } | Source::HostDevice { path } =>
                        prop_assert_eq!(&proto["filename"], path.as_str()),
                    Source::Rbd(r) => {
                        prop_assert_eq!(&proto["pool"], r.pool.as_str());
                        prop_assert_eq!(&proto["image"], r.image.as_str());
                    }
                    Source::Nbd(n) => match &n.export {
                        Some(e) => prop_assert_eq!(&proto["export"], e.as_str()),
                        None => prop_assert!(proto.get("export").is_none()),
                    },
                    _ => {}
                }
            }
            Err(e) => {
                // Only the documented limits of -blockdev.
                let Source::Rbd(r) = &src else {
                    return Err(TestCaseError::fail(format!("{e}")));
                };
                prop_assert!(
                    !r.options.is_empty() || r.mon_hosts.iter().any(|s| s.port.is_none()),
                    "{}", e
                );
            }
        }
    }

    #[test]
    fn secrets_never_in_argv(pw in "[A-Za-z0-9+/]{8,40}") {
        let key = format!("{pw}{}", "=".repeat((4 - pw.len() % 4) % 4));
        let sources = [
            Source::Rbd(Rbd { pool: "p".into(), image: "i".into(), key: Some(Secret::new(key.clone())), ..Rbd::default() }),
            Source::parse_legacy(&format!("iscsi://u%{}@h/iqn.a/1", pw.replace('/', "x"))).unwrap(),
            Source::parse_legacy(&format!("https://u:{}@h/x", pw.replace('/', "%2F"))).unwrap(),
        ];
        for src in &sources {
            let opts = DiskOptions { read_only: true, secret_dir: Some("/run/s".into()), ..DiskOptions::default() };
            let d = render_drive(src, &opts, "d0").unwrap();
            let b = render_blockdev(src, &opts, "d0").unwrap();
            for a in d.argv().unwrap().into_iter().chain(b.argv().unwrap()) {
                prop_assert!(!a.to_string_lossy().contains(&pw.replace('/', "x")), "{:?}", a);
            }
            prop_assert_eq!(d.secrets.len(), 1);
            prop_assert_eq!(b.secrets.len(), 1);
        }
    }
}

proptest! {
    #[test]
    fn qemuopts_escape_split_identity(values in proptest::collection::vec(any::<String>(), 1..5)) {
        let text: Vec<String> = values
            .iter()
            .enumerate()
            .map(|(i, v)| format!("k{i}={}", extstorage_uri::escape_opt_value(v)))
            .collect();
        let pairs = split_opts(&text.join(",")).unwrap();
        prop_assert_eq!(pairs.len(), values.len());
        for (i, (k, v)) in pairs.iter().enumerate() {
            prop_assert_eq!(k, &format!("k{i}"));
            prop_assert_eq!(v, &values[i]);
        }
    }

    #[test]
    fn qemu_version_display_parse_identity(a in 0u32..100, b in 0u32..100, c in 0u32..1000) {
        let v = extstorage_uri::QemuVersion::new(a, b, c);
        prop_assert_eq!(v.to_string().parse::<extstorage_uri::QemuVersion>().unwrap(), v);
        let text = format!("QEMU emulator version {v} (Debian 1:{v}+ds-1)\nCopyright (c) 2003-2025");
        prop_assert_eq!(extstorage_uri::QemuVersion::from_version_output(&text).unwrap(), v);
    }
}
