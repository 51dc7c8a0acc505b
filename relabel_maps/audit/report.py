"""The audit's HTML report: one self-contained file (inline CSS, JS and images) that opens offline.

Sections: the summary numbers and thresholds, the confusion pairs, the classes the teacher agrees
with least, cleanlab's comparison (when run), and a gallery of the flagged images, most suspicious
first. Each card shows the thumbnail with the top-1 class map over it, the label against the
teacher's classes (pooled probability and share of locations), the flags, and the ReaL-style set.
The gallery is filtered by flag, class and key text in plain JavaScript; the filter is kept in the
URL fragment (``report.html#flag=multi_object&class=285&q=cat``), so a filtered view can be linked.
"""

from __future__ import annotations

import html
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .flags import FLAG_NAMES, Thresholds
from .gallery import GalleryItem

__all__ = ["render_html", "write_report", "FLAG_LABELS"]

FLAG_LABELS = {
    "mislabelled": "likely mislabelled",
    "multi_object": "multi-object",
    "not_visible": "label not visible / OOD",
    "unknown_label": "label not a teacher class",
}

_DEFAULTS = Thresholds()

_CSS = """
:root{
  --fg:#1d232a;--muted:#5c6670;--line:#d9dee3;--bg:#f6f7f9;--card:#fff;--bad:#c0392b;--warn:#d68910;
  --info:#2471a3
}
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;color:var(--fg);background:var(--bg)}
header{padding:18px 28px;background:#1d232a;color:#fff}
header h1{margin:0 0 4px;font-size:22px}
header p{margin:0;color:#c8d0d8}
main{padding:8px 28px 40px}
h2{font-size:17px;margin:26px 0 10px}
.stats{display:flex;flex-wrap:wrap;gap:10px}
.stat{flex:1 1 0;background:var(--card);border:1px solid var(--line);border-radius:8px;padding:10px 14px;
  min-width:110px}
.stat b{display:block;font-size:22px}
.stat span{color:var(--muted);font-size:12px}
table{border-collapse:collapse;background:var(--card);border:1px solid var(--line);font-size:13px}
th,td{padding:5px 10px;border-bottom:1px solid var(--line);text-align:left;vertical-align:top}
th{background:#eef1f4}
td.n{text-align:right;font-variant-numeric:tabular-nums}
.cols{display:flex;flex-wrap:wrap;gap:24px}
.cols>div{flex:1 1 420px}
.controls{
  position:sticky;top:0;z-index:2;display:flex;flex-wrap:wrap;gap:10px;align-items:center;
  background:var(--bg);padding:10px 0;border-bottom:1px solid var(--line)
}
select,input{font:inherit;padding:4px 6px;border:1px solid var(--line);border-radius:6px;background:#fff}
#cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(260px,1fr));gap:14px;margin-top:14px;align-items:start}
.card{background:var(--card);border:1px solid var(--line);border-radius:10px;overflow:hidden}
.card[hidden]{display:none}
.pic{position:relative;background:#222;line-height:0}
.pic .thumb{width:100%;display:block}
.pic .ovl{position:absolute;opacity:.45;image-rendering:pixelated;pointer-events:none}
.nothumb .ovl{position:static;width:100%;opacity:1}
body.no-ovl .ovl{display:none}
body.no-ovl .nothumb .ovl{display:block}
.meta{padding:8px 10px 10px;line-height:1.4}
.key{font-family:ui-monospace,Menlo,monospace;font-size:12px;word-break:break-all;color:var(--muted)}
.badge{display:inline-block;font-size:11px;padding:1px 7px;border-radius:9px;color:#fff;margin:2px 3px 2px 0}
.b-mislabelled{background:var(--bad)}
.b-multi_object{background:var(--info)}
.b-not_visible{background:var(--warn)}
.b-unknown_label{background:#6c3483}
.sw{display:inline-block;width:10px;height:10px;border-radius:2px;margin-right:5px;vertical-align:-1px}
ul.tc{list-style:none;margin:4px 0;padding:0;font-size:12.5px}
ul.tc li{white-space:nowrap;overflow:hidden;text-overflow:ellipsis}
.lab{font-weight:600}
.muted{color:var(--muted)}
.small{font-size:12px}
"""

_JS = """
(function(){
  var cards=Array.prototype.slice.call(document.querySelectorAll('#cards .card'));
  var flag=document.getElementById('f-flag'),cls=document.getElementById('f-class'),q=document.getElementById('f-q');
  var ovl=document.getElementById('f-ovl'),count=document.getElementById('f-count');
  function readHash(){
    var out={};(location.hash||'').replace(/^#/,'').split('&').forEach(function(kv){
      if(!kv)return;var i=kv.indexOf('=');if(i<0)return;
      try{out[decodeURIComponent(kv.slice(0,i))]=decodeURIComponent(kv.slice(i+1).replace(/\\+/g,' '));}
      catch(e){}});
    return out;}
  function apply(){
    var f=flag.value,c=cls.value,t=q.value.toLowerCase(),n=0;
    cards.forEach(function(el){
      var ok=(!f||(' '+el.getAttribute('data-flags')+' ').indexOf(' '+f+' ')>=0)
        &&(!c||(' '+el.getAttribute('data-classes')+' ').indexOf(' '+c+' ')>=0)
        &&(!t||el.getAttribute('data-key').toLowerCase().indexOf(t)>=0);
      el.hidden=!ok;if(ok)n++;});
    count.textContent=n+' of '+cards.length+' shown';
    document.body.setAttribute('data-shown',String(n));}
  function save(){
    var parts=[];if(flag.value)parts.push('flag='+encodeURIComponent(flag.value));
    if(cls.value)parts.push('class='+encodeURIComponent(cls.value));if(q.value)parts.push('q='+encodeURIComponent(q.value));
    if(history.replaceState)history.replaceState(null,'',parts.length?'#'+parts.join('&'):location.pathname+location.search);}
  var h=readHash();
  if(h.flag)flag.value=h.flag;if(h['class'])cls.value=h['class'];if(h.q)q.value=h.q;
  [flag,cls].forEach(function(el){el.addEventListener('change',function(){apply();save();});});
  q.addEventListener('input',function(){apply();save();});
  ovl.addEventListener('change',function(){document.body.classList.toggle('no-ovl',!ovl.checked);});
  window.addEventListener('hashchange',function(){
    var h=readHash();flag.value=h.flag||'';cls.value=h['class']||'';q.value=h.q||'';apply();});
  apply();
})();
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def _p(x: float | None, digits: int = 3) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def _stats(summary: Mapping[str, Any]) -> str:
    counts = summary["counts"]
    cells = [
        ("images", f"{counts['images']:,}"),
        ("labelled (teacher classes)", f"{counts['labelled']:,}"),
        ("teacher agrees (top-1)", _pct(summary["classes"]["agreement"])),
        ("likely mislabelled", f"{counts['mislabelled']:,}"),
        ("multi-object", f"{counts['multi_object']:,}"),
        ("label not visible / OOD", f"{counts['not_visible']:,}"),
        ("label not a teacher class", f"{counts['unknown_label']:,}"),
        ("no label", f"{counts['unlabelled']:,}"),
    ]
    return '<div class="stats">' + "".join(f'<div class="stat"><b>{v}</b><span>{_e(k)}</span></div>' for k, v in cells)\
        + "</div>"


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]], numeric: Sequence[int] = ()) -> str:
    if not rows:
        return '<p class="muted">none</p>'
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)

    def cell(i: int, v: Any) -> str:
        return f'<td class="n">{_e(v)}</td>' if i in numeric else f"<td>{_e(v)}</td>"

    body = "".join("<tr>" + "".join(cell(i, v) for i, v in enumerate(r)) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _thresholds(summary: Mapping[str, Any]) -> str:
    t = summary["thresholds"]
    chosen = set(t["chosen_from_data"])

    def given(name: str) -> str:
        return "default" if t[name] == getattr(_DEFAULTS, name) else "given"

    conf = t["confident"]
    rows = [
        ("weak (label's best location below)", _p(t["weak"], 4), "data" if "weak" in chosen else "given"),
        ("confident (pooled, per class: min / median / max)",
         f"{_p(conf['min'])} / {_p(conf['median'])} / {_p(conf['max'])}", "data" if "confident" in chosen else "given"),
        ("region (share of locations an object wins)", _p(t["region"], 2), given("region")),
        ("same object (overlap of locations)", _p(t["same_object"], 2), given("same_object")),
        ("ReaL set (fraction of the object's best)", _p(t["real_ratio"], 2), given("real_ratio")),
    ]  # fmt: skip
    return _table(("threshold", "value", "from"), rows)


def _confusions(summary: Mapping[str, Any], limit: int = 30) -> str:
    rows = [
        (f"{c['label_name']} ({c['label']})", f"{c['teacher_name']} ({c['teacher']})", c["count"], c["reverse"],
         _pct(c["share_of_label"]))
        for c in summary["classes"]["confusions"][:limit]
    ]  # fmt: skip
    return _table(("label", "teacher's top-1", "images", "reverse", "of the label's images"), rows, numeric=(2, 3, 4))


def _worst_classes(summary: Mapping[str, Any], limit: int = 30) -> str:
    rows = [
        (f"{c['name']} ({c['class']})", c["images"], _pct(c["agreement"]), c["mislabelled"], c["multi_object"],
         c["not_visible"])
        for c in summary["classes"]["per_class"][:limit]
    ]  # fmt: skip
    return _table(("class", "images", "agreement", "mislabelled", "multi-object", "not visible"), rows, (1, 2, 3, 4, 5))


def _cleanlab(summary: Mapping[str, Any]) -> str:
    comp = summary.get("cleanlab")
    if not comp:
        return ""
    head = (
        f"<p>cleanlab <code>find_label_issues</code> ({_e(comp['filter_by'])}) on the same pooled probabilities: "
        f"both flag {comp['both']}, only the audit {comp['audit_only']}, only cleanlab {comp['cleanlab_only']}, "
        f"neither {comp['neither']} of {comp['images']} labelled images; agreement {_pct(comp['agreement'])}.</p>"
    )
    rows = [
        (d["key"], d["label_name"], d["teacher_name"], "yes" if d["audit"] else "no", "yes" if d["cleanlab"] else "no",
         d["reason"])
        for d in comp["differences"][:200]
    ]  # fmt: skip
    return "<h2>Audit vs cleanlab</h2>" + head + _table(("key", "label", "teacher", "audit", "cleanlab", "why"), rows)


def _card(item: GalleryItem) -> str:
    classes = {str(item.label)} if item.label >= 0 else set()
    classes.update(str(t["class"]) for t in item.teacher)
    x0, y0, x1, y1 = item.window
    overlay = (
        f'<img class="ovl" alt="top-1 map" src="{item.overlay}" style="left:{x0:.2f}%;top:{y0:.2f}%;'
        f'width:{x1 - x0:.2f}%;height:{y1 - y0:.2f}%">'
        if item.overlay else ""
    )
    if item.thumbnail:
        pic = f'<div class="pic"><img class="thumb" alt="" src="{item.thumbnail}">{overlay}</div>'
    else:
        pic = f'<div class="pic nothumb">{overlay}</div>'
    badges = "".join(f'<span class="badge b-{f}">{_e(FLAG_LABELS.get(f, f))}</span>' for f in item.flags)
    if item.label >= 0:
        label = f'<span class="lab">{_e(item.label_name)}</span> <span class="muted">({item.label})</span>'
        shown = item.label_given not in (None, str(item.label))
        given = f" · given <code>{_e(item.label_given)}</code>" if shown else ""
        stats = (
            f'<div class="small">p={_p(item.p_label)} · best location {_p(item.label_local_max, 2)}'
            f" · wins {_pct(item.label_share)}{given}</div>"
        )
    else:
        label = f'<span class="lab">{_e(item.label_given or "no label")}</span>'
        stats = ""
    teacher = "".join(
        f'<li><span class="sw" style="background:{t["colour"]}"></span>{_e(t["name"])} '
        f'<span class="muted">p={t["p"]:.3f} · {100 * t["share"]:.0f}%</span></li>'
        for t in item.teacher
    )
    extra = []
    if item.suggested:
        extra.append(f"suggested: <b>{_e(item.suggested)}</b>")
    if len(item.objects) > 1:
        extra.append("objects: " + _e(", ".join(item.objects)))
    extra.append("ReaL set: " + _e(", ".join(item.real_labels)))
    return (
        f'<div class="card" data-key="{_e(item.key)}" data-flags="{_e(" ".join(item.flags))}" '
        f'data-classes="{_e(" ".join(sorted(classes, key=int)))}" data-suspicion="{item.suspicion:.4f}">{pic}'
        f'<div class="meta"><div class="key">{_e(item.key)}</div>{badges}<div>label: {label}</div>{stats}'
        f'<ul class="tc">{teacher}</ul><div class="small">{"<br>".join(extra)}</div>'
        f'<div class="small muted">suspicion {item.suspicion:.2f}</div></div></div>'
    )


def _gallery(items: Sequence[GalleryItem], total_flagged: int) -> str:
    names: dict[int, str] = {}
    for item in items:
        if item.label >= 0:
            names[item.label] = item.label_name
        for t in item.teacher:
            names.setdefault(int(t["class"]), str(t["name"]))
    flag_opts = "".join(f'<option value="{f}">{_e(FLAG_LABELS[f])}</option>' for f in FLAG_NAMES)
    class_opts = "".join(
        f'<option value="{c}">{_e(n)} ({c})</option>' for c, n in sorted(names.items(), key=lambda kv: kv[1].lower())
    )
    note = (
        f'<p class="muted">The {len(items):,} most suspicious of {total_flagged:,} flagged images; the table holds '
        "every image.</p>"
    )
    controls = (
        '<div class="controls"><label>flag <select id="f-flag"><option value="">any</option>'
        f'{flag_opts}</select></label><label>class <select id="f-class"><option value="">any</option>{class_opts}'
        '</select></label><label>key <input id="f-q" type="search" placeholder="contains"></label>'
        '<label><input id="f-ovl" type="checkbox" checked> top-1 map</label>'
        '<span id="f-count" class="muted"></span></div>'
    )
    return "<h2>Flagged images</h2>" + note + controls + '<div id="cards">' + "".join(map(_card, items)) + "</div>"


def render_html(summary: Mapping[str, Any], items: Sequence[GalleryItem]) -> str:
    """The report as one HTML string."""
    src = summary.get("source", {})
    teacher = src.get("teacher") or "unknown teacher"
    sub = (
        f"maps <code>{_e(src.get('maps', ''))}</code> · labels {_e(src.get('labels', ''))} · teacher {_e(teacher)} · "
        f"pooled with fill <code>{_e(', '.join(summary.get('fill', [])))}</code>"
    )
    data = json.dumps({"counts": summary["counts"]}).replace("</", "<\\/")
    body = (
        f"<header><h1>Label audit</h1><p>{sub}</p></header><main>"
        f"<h2>Summary</h2>{_stats(summary)}"
        f'<div class="cols"><div><h2>Thresholds</h2>{_thresholds(summary)}</div>'
        f"<div><h2>Most frequent confusions</h2>{_confusions(summary)}</div></div>"
        f"<h2>Classes the teacher agrees with least</h2>{_worst_classes(summary)}"
        f"{_cleanlab(summary)}{_gallery(items, int(summary['counts']['flagged']))}</main>"
    )
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>Label audit</title><style>{_CSS}</style></head><body>{body}"
        f'<script type="application/json" id="audit-summary">{data}</script><script>{_JS}</script></body></html>'
    )


def write_report(path: str | os.PathLike[str], summary: Mapping[str, Any], items: Sequence[GalleryItem]) -> Path:
    """Write :func:`render_html` to ``path`` atomically."""
    final = Path(path)
    tmp = final.with_name(f".{final.name}.tmp")
    try:
        tmp.write_text(render_html(summary, items), encoding="utf-8")
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()
    return final
