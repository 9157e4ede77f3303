"""``ndxp registry import/export`` (Kafka, for operators of the platform) and ``ndxp admin …``
(the management API from a terminal: a table, or ``--json``)."""

from __future__ import annotations

import argparse
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import orjson
import uvloop
import yaml

from broker.commands import progress
from broker.contracts.catalog import Catalog
from broker.contracts.registry import documents_from_import, read_yaml
from broker.errors import StartupError
from broker.kafka.registry import RegistryFollower, RegistryWriter, import_proposal
from broker.settings import Settings

# -- ndxp registry import / export ----------------------------------------------------------------


async def import_file(settings: Settings, path: Path, *, replace: bool, schemas: Path | None) -> int:
    """Load a registry file into the live registry; the number of documents written."""
    started = time.perf_counter()
    raw = read_yaml(path)
    catalog = None
    if "services" not in raw:
        catalog = Catalog.load(schemas or settings.schemas_dir)
    documents = documents_from_import(raw, catalog, source=str(path))
    progress(f"{path}: {len(documents)} documents checked in {time.perf_counter() - started:.1f}s")
    follower = RegistryFollower(settings, part="import")
    await follower.start()
    writer = RegistryWriter(settings, follower)
    try:
        progress(f"reading the live registry ({settings.registry_topic}): {follower.live.applied} records")
        proposal = await writer.write(
            lambda live: import_proposal(live, documents, actor="import", replace=replace)
        )
    finally:
        await writer.stop()
        await follower.stop()
    written = len(proposal.entries) if proposal is not None else 0
    progress(f"{written} documents written ({len(documents) - written} unchanged) "
             f"in {time.perf_counter() - started:.1f}s")  # fmt: skip
    return written


async def export_registry(settings: Settings) -> dict[str, Any]:
    follower = RegistryFollower(settings, part="export")
    await follower.start()
    try:
        return follower.live.export()
    finally:
        await follower.stop()


def dump_yaml(data: Any) -> str:
    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    return yaml.dump(data, Dumper=dumper, sort_keys=False, allow_unicode=True, width=120)


def _registry_import(settings: Settings, args: argparse.Namespace) -> int:
    uvloop.run(import_file(settings, args.file, replace=args.replace, schemas=args.schemas))
    return 0


def _registry_export(settings: Settings, args: argparse.Namespace) -> int:
    text = dump_yaml(uvloop.run(export_registry(settings)))
    if args.out is None:
        sys.stdout.write(text)
    else:
        args.out.write_text(text)
        progress(f"registry written to {args.out}")
    return 0


# -- ndxp admin ------------------------------------------------------------------------------------


class AdminClient:
    """The management API over HTTP (urllib: a terminal tool needs no event loop)."""

    def __init__(self, url: str, key: str | None) -> None:
        if not key:
            raise StartupError("ndxp admin needs a key: --key KEY or NDXP_ADMIN_KEY")
        self.url = url.rstrip("/")
        self.key = key

    def call(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None) -> Any:
        data = None if body is None else orjson.dumps(body)
        request = urllib.request.Request(  # noqa: S310 (the operator's own URL)
            self.url + path,
            data=data,
            method=method,
            headers={
                "Authorization": f"Bearer {self.key}",
                "Content-Type": "application/json",
                **(headers or {}),
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as resp:  # noqa: S310
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            problem = _problem(exc.read())
            raise StartupError(
                f"{exc.code} {problem.get('code', '')}: {problem.get('detail', exc.reason)}"
            ) from None
        except urllib.error.URLError as exc:
            raise StartupError(f"the management API at {self.url} did not answer: {exc.reason}") from None
        return orjson.loads(raw) if raw else {}


def _problem(raw: bytes) -> dict[str, Any]:
    try:
        out = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return {}
    return out if isinstance(out, dict) else {}


def table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """A plain text table: a header, then one line per row."""
    cells = [[_cell(r.get(c)) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, list):
        return ",".join(map(str, value)) or "-"
    if isinstance(value, dict):
        return orjson.dumps(value).decode()
    return str(value)


def _show(args: argparse.Namespace, data: Any, key: str | None, columns: list[str]) -> None:
    if args.json or key is None:
        sys.stdout.write(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        sys.stdout.write(table(data[key], columns) + "\n")


def _admin(settings: Settings, args: argparse.Namespace) -> int:
    url = args.url or f"http://{settings.admin_host}:{settings.admin_port}"
    client = AdminClient(url, args.key or settings.admin_key)
    what = f"{args.group} {args.verb}"
    if what == "agencies list":
        _show(
            args,
            client.call("GET", "/admin/v1/agencies"),
            "agencies",
            ["id", "code", "name", "roles", "rate_limit"],
        )
    elif what == "agencies add":
        doc: dict[str, Any] = {"id": args.id, "code": args.code or args.id, "name": args.name or args.id}
        if args.role:
            doc["roles"] = args.role
        if args.rate_limit is not None:
            doc["rate_limit"] = args.rate_limit
        _show(args, {"agencies": [client.call("POST", "/admin/v1/agencies", doc)]}, "agencies",
              ["id", "code", "name", "roles", "rate_limit"])  # fmt: skip
    elif what == "agencies show":
        _show(args, client.call("GET", f"/admin/v1/agencies/{_segment(args.id)}"), None, [])
    elif what == "agencies kafka-credentials":
        issued = client.call("POST", f"/admin/v1/agencies/{_segment(args.id)}/kafka-credentials")
        _show(args, {"credentials": [issued]}, "credentials",
              ["username", "password", "sasl_mechanism", "bootstrap", "acls"])  # fmt: skip
        if not args.json and issued.get("kafka_user"):
            secret = issued["password_secret"]
            progress(f"Strimzi's User Operator makes Kafka's users here: apply the answer's kafka_user "
                     f"(--json), a KafkaUser; its password will be in the Secret {secret}, "
                     "key password")  # fmt: skip
        elif not args.json:
            progress(
                "the password is shown once: its adapter connects with NDXP_KAFKA_SASL_USERNAME/PASSWORD"
            )
    elif what == "keys issue":
        body = {"expires": args.expires} if args.expires else {}
        issued = client.call("POST", f"/admin/v1/agencies/{_segment(args.agency)}/keys", body)
        _show(args, {"keys": [issued]}, "keys", ["key_id", "key", "expires"])
        if not args.json:
            progress("the key is shown once: keep it now (only its hash is stored)")
    elif what == "keys revoke":
        client.call("DELETE", f"/admin/v1/agencies/{_segment(args.agency)}/keys/{_segment(args.key_id)}")
        progress(f"key {args.key_id} of {args.agency} revoked")
    elif what == "access request":
        body = {"client": args.client, "provider": args.provider, "purpose": args.purpose}
        body["service" if args.service else "event"] = args.service or args.event
        if args.version is not None:
            body["version"] = args.version
        _show(args, {"access_requests": [client.call("POST", "/admin/v1/access-requests", body)]},
              "access_requests", ["id", "state", "right", "purpose"])  # fmt: skip
    elif what == "access list":
        _show(args, client.call("GET", "/admin/v1/access-requests"), "access_requests",
              ["id", "state", "right", "purpose", "requested_by", "decided_by"])  # fmt: skip
    elif what in ("access approve", "access reject"):
        decided = client.call("POST", f"/admin/v1/access-requests/{_segment(args.id)}/{args.verb}")
        _show(args, {"access_requests": [decided]}, "access_requests", ["id", "state", "right", "decided_by"])
    elif what == "rights list":
        _show(args, client.call("GET", "/admin/v1/rights"), "rights",
              ["id", "kind", "client", "provider", "service", "event", "version"])  # fmt: skip
    elif what == "rights revoke":
        client.call("DELETE", f"/admin/v1/rights/{_segment(args.id)}")
        progress(f"right {args.id} revoked")
    elif what == "services list":
        _show(args, client.call("GET", "/admin/v1/services"), "services",
              ["provider", "service", "version", "state", "default"])  # fmt: skip
    elif what == "services publish":
        doc = orjson.loads(args.file.read_bytes())
        provider = args.provider or doc.get("provider") or args.file.parent.name
        service = args.service or doc.get("service") or args.file.stem
        published = client.call("PUT", f"/admin/v1/services/{_segment(provider)}/{_segment(service)}", doc)
        _show(
            args,
            {"services": [published]},
            "services",
            ["provider", "service", "version", "state", "default"],
        )
    elif what == "changes list":
        query = f"?since={urllib.parse.quote(args.since)}" if args.since else ""
        _show(args, client.call("GET", f"/admin/v1/changes{query}"), "changes",
              ["at", "actor", "action", "target", "outcome"])  # fmt: skip
    return 0


def _segment(text: str) -> str:
    return urllib.parse.quote(text, safe="")


def add_commands(sub: Any) -> None:
    """``ndxp registry …`` and ``ndxp admin …``."""
    registry = sub.add_parser("registry", help="move a registry file into / out of the live registry (Kafka)")
    rsub = registry.add_subparsers(dest="registry_command", required=True)
    imp = rsub.add_parser("import", help="load a registry file (YAML) into the live registry")
    imp.add_argument("file", type=Path)
    imp.add_argument("--replace", action="store_true",
                     help="also remove agencies, keys and rights the file does not have")  # fmt: skip
    imp.add_argument("--schemas", type=Path, default=None,
                     help="the contracts if the file has none (default NDXP_SCHEMAS_DIR)")  # fmt: skip
    imp.set_defaults(func=_registry_import)
    exp = rsub.add_parser("export", help="write the live registry out (YAML, the import format)")
    exp.add_argument("--out", type=Path, default=None, help="a file (default: stdout)")
    exp.set_defaults(func=_registry_export)

    admin = sub.add_parser("admin", help="the management API from a terminal")
    admin.add_argument("--url", default=None, help="the management API (default NDXP_ADMIN_HOST:PORT)")
    admin.add_argument("--key", default=None, help="your agency's API key (default NDXP_ADMIN_KEY)")
    admin.add_argument("--json", action="store_true", help="print the API's JSON instead of a table")
    groups = admin.add_subparsers(dest="group", required=True)

    def verb(group: Any, name: str, text: str) -> Any:
        parser = group.add_parser(name, help=text)
        parser.set_defaults(func=_admin, verb=name)
        return parser

    agencies = groups.add_parser("agencies", help="members").add_subparsers(dest="verb", required=True)
    verb(agencies, "list", "agencies you may see")
    add = verb(agencies, "add", "add an agency (operator)")
    add.add_argument("id")
    add.add_argument("--code")
    add.add_argument("--name")
    add.add_argument("--role", action="append", choices=("operator", "tracker"))
    add.add_argument("--rate-limit", type=float, default=None)
    verb(agencies, "show", "one agency with its key ids").add_argument("id")
    verb(
        agencies, "kafka-credentials", "a provider's own Kafka user for its adapter (operator)"
    ).add_argument("id")
    keys = groups.add_parser("keys", help="API keys").add_subparsers(dest="verb", required=True)
    issue = verb(keys, "issue", "issue a key (shown once)")
    issue.add_argument("agency")
    issue.add_argument("--expires", help="a date or ISO time (default: a year)")
    revoke = verb(keys, "revoke", "revoke a key")
    revoke.add_argument("agency")
    revoke.add_argument("key_id")
    access = groups.add_parser("access", help="access requests").add_subparsers(dest="verb", required=True)
    req = verb(access, "request", "ask for a right (as the client)")
    req.add_argument("--client", required=True)
    req.add_argument("--provider", required=True)
    target = req.add_mutually_exclusive_group(required=True)
    target.add_argument("--service")
    target.add_argument("--event")
    req.add_argument("--version", type=int, default=None, help="a major version (default: all)")
    req.add_argument("--purpose", required=True)
    verb(access, "list", "requests that concern you")
    verb(access, "approve", "approve (as the provider)").add_argument("id")
    verb(access, "reject", "reject (as the provider)").add_argument("id")
    rights = groups.add_parser("rights", help="rights").add_subparsers(dest="verb", required=True)
    verb(rights, "list", "rights you may see")
    verb(rights, "revoke", "revoke a right (as the provider)").add_argument("id")
    services = groups.add_parser("services", help="service versions").add_subparsers(
        dest="verb", required=True
    )
    verb(services, "list", "every version with its state")
    pub = verb(services, "publish", "publish a service version (a schemas/ document)")
    pub.add_argument("file", type=Path)
    pub.add_argument("--provider", default=None, help="default: the file's folder")
    pub.add_argument("--service", default=None, help="default: the file's name")
    changes = groups.add_parser("changes", help="the change log")
    changes.set_defaults(func=_admin, verb="list")
    changes.add_argument("--since", default=None, help="changes after this change_id")
