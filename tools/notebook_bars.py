"""The last updates of a text progress bar in an executed, or partly executed, notebook (papermill saves it as it runs):

    python tools/notebook_bars.py NOTEBOOK [PREFIX] [K]     # the last K (3) updates of the bars whose text starts with PREFIX (hindsight)

tqdm without ipywidgets (as on the GPU machine) writes to stderr, and each update reaches the notebook as stream text after a
carriage return. Widget bars (ipywidgets installed) keep their updates in the widget, not in the notebook: none are found.
tools/gpu_reproduction.sh prints a stopped figure-3 run's hindsight bar with it: at each prefix N the bar says how many of
that prefix's solves did not meet their stop rule."""
import json
import sys


def bar_lines(nb: dict, # a notebook (nbformat 4) as read from its json
              prefix: str = 'hindsight', # the bar's description
             ) -> list[str]:
    "Every update of the bars described by `prefix`, in the order the notebook holds them."
    out = []
    for cell in nb.get('cells', []):
        for o in cell.get('outputs', []):
            if o.get('output_type') != 'stream': continue
            text = ''.join(o['text']) if isinstance(o['text'], list) else o['text']
            out += [l.strip() for l in text.replace('\r', '\n').split('\n') if l.strip().startswith(prefix)]
    return out


if __name__ == '__main__':
    if not 2 <= len(sys.argv) <= 4 or (len(sys.argv) == 4 and not sys.argv[3].isdigit()):
        raise SystemExit('usage: python tools/notebook_bars.py NOTEBOOK [PREFIX] [K]   (K: a whole number of updates)')
    with open(sys.argv[1]) as f: lines = bar_lines(json.load(f), *sys.argv[2:3])
    k = int(sys.argv[3]) if len(sys.argv) == 4 else 3
    print('\n'.join(f'  {l}' for l in lines[-k:]) if lines else '  (no text progress bar in the notebook)')
