"""support/eval_report.py: eval.py's reports, from its result rows and records.

    markdown_table(rows)           the results table: per benchmark the protocol, each grader's
                                   score, how many verdicts differ, the paper's numbers
    disagreements(name, records)   a markdown section of disagreements.md: every response of one
                                   benchmark that the official grader and ours judge differently

`rows` are the dicts eval.py writes to results.json ("benchmarks"); `records` are evaluate()'s.
"""


def markdown_table(rows):
    """The results as a markdown table: per benchmark the protocol that sampled it, our grader's
    score, and where one of the seven benchmarks is in the table the official grader's score on the
    same responses, how many verdicts differ and the paper's numbers ("-" for the other rows)."""
    with_paper = any(row["paper"] for row in rows)
    header = ["benchmark", "n", "metric", "protocol"] + (["official grader %"] if with_paper else []) + \
        ["our grader %"] + (["differ"] if with_paper else []) + ["mean response tokens", "truncated %"]
    if with_paper:
        header += ["Eurus-2-7B-SFT %", "Eurus-2-7B-PRIME %"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        paired = row["paper_accuracy"] is not None
        official = [f"{100 * row['paper_accuracy']:.1f}" if paired else "-"] if with_paper else []
        differ = [str(row["differ"]) if paired else "-"] if with_paper else []
        cells = [row["benchmark"], str(row["n"]), row["metric"], row["protocol"], *official,
                 f"{100 * row['our_accuracy']:.1f}", *differ,
                 f"{row['mean_response_tokens']:.0f}", f"{100 * row['truncation_rate']:.1f}"]
        if with_paper:
            paper = row["paper"]
            cells += [f"{paper['Eurus-2-7B-SFT']:.1f}", f"{paper['Eurus-2-7B-PRIME']:.1f}"] if paper else ["-", "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def disagreements(name, records):
    """The lines of a markdown section listing the responses of one benchmark that the two graders
    judge differently: verdicts, extracted answers and golds, and the end of the response (fenced
    with tildes: a response may hold backtick fences itself)."""
    differ = [r for r in records if r.get("paper_score") is not None and r["paper_score"] != r["our_score"]]
    lines = [f"## {name}: {len(differ)} responses graded differently", ""]
    for r in differ:
        lines += [f"### {r['id']} (sample {r['sample']}): official {r['paper_score']:g}, ours {r['our_score']:g}", ""]
        if r["paper_gold"] is not None:  # math: what each grader compared
            lines += [f"- official: extracted `{r['paper_extracted']}`, gold `{r['paper_gold']}`",
                      f"- ours: extracted `{r['extracted']}`, gold `{r['ground_truth']}`"]
        else:  # code: the same program and tests, under other time limits
            lines.append("- code: the same program and tests, graded under the official time limit and under ours")
        tail = r["response"][-1500:]
        lines += ["", "~~~~", ("..." if len(tail) < len(r["response"]) else "") + tail, "~~~~", ""]
    return lines
