"""Prints the bench table from JSON lines (`trainer bench --json`, tests/bench/torch_bench.py):
each PyTorch line is compared with our latest line of the same case, model, resolution, batch
and precision.
Usage: table.py RESULTS.jsonl"""
import json
import sys

# Other lines (warnings some libraries print on stdout) are skipped.
lines = [json.loads(line) for line in open(sys.argv[1]) if line.startswith("{")]
print(f"{'case':<6} {'model':<9} {'px':>4} {'batch':>5} {'who':<22} {'prec':<5} {'ms':>9} "
      f"{'img/s':>9} {'peak MB':>8} {'ours/this':>9}")
ours = {}
ratios = {}
for line in lines:
    mine = not line["device"].startswith("torch")
    model = "demo" if line["model"].endswith(".json") else line["model"]
    key = (line["case"], model, line["resolution"], line["batch"], line["precision"])
    if mine:
        ours[key] = line
    who = "ours " + line["device"] if mine else line["device"].split(" (")[0][:22]
    ratio = ""
    if not mine and key in ours:
        value = ours[key]["images_per_sec"] / line["images_per_sec"]
        ratio = f"{value:.2f}x"
        ratios.setdefault(key, []).append(value)
    print(f"{line['case']:<6} {model:<9} {line['resolution']:>4} {line['batch']:>5} {who[:22]:<22} "
          f"{line['precision']:<5} {line['median_ms']:>9.1f} {line['images_per_sec']:>9.2f} "
          f"{(line['peak_memory_bytes'] or 0) / 1e6:>8.0f} {ratio:>9}")
print("ratio: our images/s over PyTorch's (above 1: we are faster). Peak memory: the process's "
      "resident high-water mark on the CPU, the allocator's peak on CUDA for PyTorch.")
if any(len(values) > 1 for values in ratios.values()):
    print("median ratio over the rounds (each pair measured in turn):")
    for (case, model, px, batch, precision), values in ratios.items():
        values = sorted(values)
        middle = len(values) // 2
        median = values[middle] if len(values) % 2 else (values[middle - 1] + values[middle]) / 2
        print(f"  {case:<6} {model:<9} {px:>4} px batch {batch:>4} {precision:<5} {median:.2f}x "
              f"(rounds: {', '.join(f'{v:.2f}' for v in values)})")
