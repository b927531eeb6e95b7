"""``apr data``: training and evaluation data from local source code, offline.

``apr data code-instruct`` writes instruction-tuning jsonl (documented function -> body) for
Python, Rust or TypeScript; ``apr data heldout`` writes the held-out evaluation text of a
language (what ``apr eval --dataset rust-code`` measures); ``apr data sources`` says what is
installed where and installs what is missing. Only click is imported here; the extractors load
when a command runs, and nothing imports torch.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import click

from apr_core import codesources

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
LANGUAGES = tuple(codesources.sources())


def _emit_json(data) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True))


@click.group("data", context_settings=CONTEXT)
def data() -> None:
    """Build training and evaluation data from local source code, offline."""


@data.command("code-instruct", context_settings=CONTEXT)
@click.option("--language", required=True, type=click.Choice(LANGUAGES), help="Language of the functions.")
@click.option("--source", "sources", multiple=True, metavar="DIR",
              help="Source tree (or file) to read; repeatable. Default: the language's installed "
                   "sources (see apr data sources).")
@click.option("-o", "--output", required=True, help="Output jsonl: instruction, input, output, language, source.")
@click.option("--max-examples", type=click.IntRange(min=1), default=None, help="Keep at most N (after the shuffle).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the shuffle.")
@click.option("--min-body-lines", type=click.IntRange(min=1), default=3, show_default=True,
              help="Skip bodies with fewer non-blank lines (closing brace not counted).")
@click.option("--max-body-chars", type=click.IntRange(min=1), default=4000, show_default=True,
              help="Skip bodies longer than this.")
@click.option("--heldout-files", "heldout", multiple=True, metavar="PATH",
              help="More files never to use (path suffix such as json/decoder.py); repeatable. The "
                   "language's fixed held-out files are always excluded.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable summary on stdout.")
@click.option("-q", "--quiet", is_flag=True, help="No progress output on stderr.")
def code_instruct(language, sources, output, max_examples, seed, min_body_lines, max_body_chars, heldout,
                  as_json, quiet) -> None:
    """Write instruction-tuning jsonl from documented functions.

    One record per function with a docstring (Python), /// doc comment (Rust) or JSDoc (TypeScript):
    input = documentation + signature, output = body. Same sources and seed, same bytes."""
    from apr_core.errors import AprError
    from apr_core.progress import progress

    from . import instruct

    start = time.perf_counter()
    if not Path(output).parent.is_dir():  # before minutes of reading, not after
        raise AprError(f"cannot write {output}: directory {Path(output).parent} does not exist")
    source = codesources.get(language)
    roots = instruct.resolve_roots(source, sources)
    result = instruct.build(language, roots, min_body_lines=min_body_lines, max_body_chars=max_body_chars,
                            max_examples=max_examples, seed=seed, extra_heldout=tuple(heldout),
                            progress=lambda items, desc: progress(items, desc=desc, quiet=quiet))
    if not result.records:
        raise AprError(f"no {source.title} functions with a {instruct.DOC_WORDS[language]} and at least "
                       f"{min_body_lines} body lines (at most {max_body_chars} characters) in "
                       f"{', '.join(result.roots)}; {result.files} files read")
    sha = instruct.write_jsonl(result.records, output)
    summary = {**result.summary(), "output": output, "sha256": sha, "seed": seed,
               "seconds": round(time.perf_counter() - start, 3)}
    if as_json:
        _emit_json(summary)
        return
    click.echo(f"wrote {len(result.records)} {language} examples to {output} from {result.files} files "
               f"({len(result.heldout_files)} held out, {len(result.unreadable_files)} unreadable, "
               f"{result.duplicates} duplicates dropped)")


@data.command("heldout", context_settings=CONTEXT)
@click.option("--language", required=True, type=click.Choice(LANGUAGES), help="Language of the text.")
@click.option("-o", "--output", required=True, help="Output text file, for apr eval --dataset FILE.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable summary on stdout.")
def heldout(language, output, as_json) -> None:
    """Write a language's held-out evaluation text.

    The files code-instruct never uses, joined with blank lines: the same text as the built-in
    corpus (stdlib-code, rust-code, typescript-code) that apr eval --dataset measures."""
    from apr_core.atomic import write_bytes
    from apr_core.corpora import load_corpus

    source = codesources.get(language)
    corpus = load_corpus(source.corpus)
    write_bytes(output, corpus.text.encode("utf-8"))
    summary = {"language": language, "corpus": source.corpus, "output": output, "files": list(source.heldout),
               "chars": len(corpus.text), "sha256": corpus.sha256}
    if as_json:
        _emit_json(summary)
        return
    click.echo(f"wrote the {source.corpus} text ({len(source.heldout)} files, {len(corpus.text):,} characters) "
               f"to {output}")


@data.command("sources", context_settings=CONTEXT)
@click.option("--install", "install", multiple=True, type=click.Choice(("rust", "typescript", "all")),
              help="Install the sources of a language (rust: apt-get, as root; typescript: npm pack "
                   "into apr's cache) instead of listing them; repeatable. Already installed ones are "
                   "left alone.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output on stdout.")
def sources_cmd(install, as_json) -> None:
    """Show (and install) the code sources of each language.

    Where they are, how many files and packages, and how to install what is missing."""
    from . import install as installer

    wanted = list(installer.INSTALLERS) if "all" in install else list(dict.fromkeys(install))
    messages = [installer.INSTALLERS[language]() for language in wanted]
    rows = installer.status()
    if as_json:
        _emit_json({"installed": messages, "languages": rows})
        return
    for message in messages:
        click.echo(message)
    if messages:
        return
    for row in rows:
        state = "installed" if row["installed"] else "MISSING"
        packages = f", {len(row['packages'])} packages" if row["packages"] else ""
        click.echo(f"{row['language']:<11} {state:<9} {row['root']} ({row['files']} files{packages}; "
                   f"held-out corpus {row['corpus']})")
        if row["heldout_missing"]:
            click.echo(f"{'':<21} held-out files missing: {', '.join(row['heldout_missing'])}")
        if not row["installed"]:
            click.echo(f"{'':<21} install: {row['install']}")
