"""Problem sets: whole homework notebooks, parts building on each other, graded on the student's own model.

    minidiff course sets                              the sets: parts, student time, graded training's CPU time
    minidiff course set N --dir D [--solution]        the starter notebook (or the teacher's solution)
    minidiff course grade N NOTEBOOK [--json] [--all]  (grading.py)
    minidiff course autograder --set N                (grading.py)

A set is a list of Parts. A part grades one or more functions with the checks of their Exercise
records (the numbered exercises' own checks and hints, or parts.py's), or, for a trained part,
trains the student's model and scores it against a band measured on the reference solution
(docs/exercises/problem_sets.md). The notebook's cells carry tags: `minidiff-answer` (the student's
functions: what grading keeps), `minidiff-check` (the check cells), `minidiff-student-run` (figures
and the student's own training: what grading skips, since the grader trains the model itself).
"""

from __future__ import annotations

import inspect

from .core import Exercise, UsageError
from .problem_set import Part, ProblemSet  # noqa: F401  (re-exported: the sets are built from them)
from .parts import DDPM_SAMPLE, TRAIN_LOOP, reference_train_loop
from .exercises import EXERCISES
from .set_training import BUDGET


def _starter(ex: Exercise) -> str:
    doc = "\n".join(("    " + line) if line else "" for line in ex.docstring.splitlines())
    return f'{ex.signature}\n    """{doc.lstrip()}\n    """\n    raise NotImplementedError("write {ex.function}")'


# ------------------------------------------------------------------------------------------------
# Set 1: DDPM from scratch
# ------------------------------------------------------------------------------------------------

S1_Q_SAMPLE = '''def q_sample(x0, alpha_bar, noise):
    alpha_bar = torch.as_tensor(alpha_bar, dtype=x0.dtype)
    return alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * noise'''

S1_ALPHAS = '''def alphas_cumprod(kind, num_timesteps=1000):
    T = num_timesteps
    if kind == "linear":
        betas = torch.linspace(1e-4, 0.02, T, dtype=torch.float64)
    elif kind == "scaled_linear":
        betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, T, dtype=torch.float64) ** 2
    elif kind == "cosine":
        s = 0.008
        f = lambda t: torch.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2
        t = torch.arange(T + 1, dtype=torch.float64)
        ab = f(t) / f(torch.zeros(1, dtype=torch.float64))
        betas = (1 - ab[1:] / ab[:-1]).clamp(max=0.999)
    else:
        raise ValueError(kind)
    return torch.cumprod(1 - betas, 0)'''

S1_LOSS = '''def v_loss(model, x0, alphas_cumprod, generator):
    t = torch.randint(0, len(alphas_cumprod), (x0.shape[0],), generator=generator)
    noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype)
    a = alphas_cumprod[t].to(x0.dtype).view(-1, *[1] * (x0.ndim - 1))
    x_t = q_sample(x0, a, noise)
    v = a.sqrt() * noise - (1 - a).sqrt() * x0
    return ((model(x_t, t) - v) ** 2).mean()'''

# the solution's loop is the reference the checks compare against, renamed (one copy of the code)
S1_LOOP = inspect.getsource(reference_train_loop).replace("def reference_train_loop", "def train_loop", 1).rstrip()

S1_SAMPLERS = '''def trailing(T, steps):
    return [round(T - k * T / steps) - 1 for k in range(steps)]


def ddim_sample(denoise, x_T, alphas_cumprod, steps):
    ab, ts = alphas_cumprod.tolist(), trailing(len(alphas_cumprod), steps)
    x = x_T
    for i, t in enumerate(ts):
        x0, eps = denoise(x, t)
        a_prev = ab[ts[i + 1]] if i + 1 < len(ts) else 1.0
        x = a_prev ** 0.5 * x0 + (1 - a_prev) ** 0.5 * eps
    return x


def ddpm_sample(denoise, x_T, alphas_cumprod, steps, generator):
    ab, ts = alphas_cumprod.tolist(), trailing(len(alphas_cumprod), steps)
    x = x_T
    for i, t in enumerate(ts):
        x0, _ = denoise(x, t)
        a_t = ab[t]
        a_prev = ab[ts[i + 1]] if i + 1 < len(ts) else 1.0
        a = a_t / a_prev
        x_new = a_prev ** 0.5 * (1 - a) / (1 - a_t) * x0 + a ** 0.5 * (1 - a_prev) / (1 - a_t) * x
        if a_prev < 1:
            var = (1 - a_prev) / (1 - a_t) * (1 - a)
            x_new = x_new + var ** 0.5 * torch.randn(x.shape, generator=generator, dtype=x.dtype)
        x = x_new
    return x'''

S1_NOISING_GRID = '''# The figure of part 1: five training images noised by your q_sample at seven timesteps
# (it uses your alphas_cumprod from part 2 once that is written; the linear schedule until then).
import matplotlib.pyplot as plt
from minidiff.course.set_training import training_images
from minidiff.schedules import Schedule

images = training_images(5)
try:
    ab = alphas_cumprod("linear")
except NotImplementedError:
    ab = Schedule.make("linear").alphas_cumprod
ts = [0, 50, 100, 250, 500, 750, 999]
noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(0))
fig, axes = plt.subplots(5, len(ts), figsize=(len(ts) * 1.1, 5.6))
for j, t in enumerate(ts):
    x_t = q_sample(images, ab[t].item(), noise)
    for i in range(5):
        axes[i, j].imshow(x_t[i, 0].clamp(-1, 1).numpy(), cmap="gray", vmin=-1, vmax=1)
        axes[i, j].axis("off")
    axes[0, j].set_title(f"t = {t}", fontsize=8)
plt.show()'''

S1_SNR_FIGURE = '''# The figure of part 2: log SNR(t) = log(alpha_bar / (1 - alpha_bar)) of the three schedules.
import matplotlib.pyplot as plt

for kind in ("linear", "cosine", "scaled_linear"):
    ab = alphas_cumprod(kind)
    plt.plot((ab / (1 - ab)).log().numpy(), label=f"{kind}: SNR(T) = {(ab[-1] / (1 - ab[-1])).item():.3g}")
plt.xlabel("t"), plt.ylabel("log SNR"), plt.legend(), plt.show()'''

S1_TRAIN = f'''# Part 6: your functions train the model and draw it. This is what the grader runs, with the
# budget below ({BUDGET["steps"]} steps: a few minutes on two CPU cores). MINIDIFF_SET_STEPS=N in the
# environment trains a shorter run (for a first try; the band is set at the full budget).
import os
import matplotlib.pyplot as plt
from IPython.display import Image, display
import base64

from minidiff.course.set_training import BUDGET, figures, train_and_draw

steps = int(os.environ.get("MINIDIFF_SET_STEPS", BUDGET["steps"]))
result = train_and_draw(dict(v_loss=v_loss, train_loop=train_loop, ddim_sample=ddim_sample), steps=steps)
print(f"{{steps}} steps in {{result['train_seconds']:.0f}} s; FCD {{result['fcd']:.2f}} (the band is in the set's text)")
for name, data in figures(result).items():
    display(Image(data=base64.b64decode(data)))'''

SET1 = ProblemSet(
    1, "DDPM from scratch",
    "You write a diffusion model's pieces one by one, each checked as you go: the forward process, the "
    "noise schedule, the training loss, the training loop and two samplers. Then your functions, and "
    "nothing else, train a small network on Fashion-MNIST for a fixed budget and draw it; the grader "
    "scores your samples with a yardstick shipped with minidiff (a classifier's features, the FCD: 0.2 for "
    "real images, 70 for noise).\n\nWork top to bottom: each part uses the ones before it. Run a part's check "
    "cell as often as you like; the hints name the mistake. Grading runs this notebook in a fresh kernel "
    "(your answer cells only), checks every part and trains your model itself.",
    [
        Part("1", "The forward process",
             "Write `q_sample`: the noisy sample x_t = sqrt(alpha_bar) x0 + sqrt(1 - alpha_bar) eps (Ho et al. "
             "eq. 4). Everything after builds on it: the loss trains the network to undo it, the samplers run it "
             "backwards. alpha_bar and 1 - alpha_bar are *variances*; the sample is scaled by their square roots. "
             "The figure below shows five clothes at seven timesteps: by t = 500 of the linear schedule there is "
             "little left to see.",
             [EXERCISES[1]], 10, S1_Q_SAMPLE, S1_NOISING_GRID,
             "At which timestep of the linear schedule does the noise's share of the variance pass one half?",
             "Where alpha_bar_t < 0.5: t = 259 on the linear schedule (alpha_bar_258 = 0.5002, alpha_bar_259 = 0.4976)."),
        Part("2", "The noise schedule",
             "Write `alphas_cumprod`: alpha_bar_t = prod_{s <= t} (1 - beta_s) for the linear (Ho et al.), cosine "
             "(Nichol and Dhariwal) and scaled-linear (Stable Diffusion) schedules, in float64. Table 1 of Lin et "
             "al. gives each one's terminal SNR, alpha_bar_T / (1 - alpha_bar_T): none is zero, so the last step "
             "still holds a little of the image (set 2 is about that).",
             [EXERCISES[2]], 10, S1_ALPHAS, S1_SNR_FIGURE,
             "Why is alpha_bar the cumulative product of 1 - beta and not of beta?",
             "Each step keeps a fraction 1 - beta_t of the signal's variance (x_t = sqrt(1 - beta_t) x_{t-1} + "
             "sqrt(beta_t) eps); kept fractions multiply. The product of the betas is the chance of all steps "
             "being pure noise, about 1e-2000 for the linear schedule."),
        Part("3", "The training loss",
             "Write `v_loss`: draw one timestep per image and the noise from the generator, build x_t with your "
             "`q_sample` (alpha_bar shaped [B, 1, 1, 1]), and return the mean squared error between the model's "
             "output and v = sqrt(a) eps - sqrt(1 - a) x0 (Salimans and Ho; Lin et al. eq. 11). Predicting v keeps "
             "the target's scale the same at every noise level.",
             [EXERCISES[12]], 15, S1_LOSS, "",
             "At t with alpha_bar = 0.5, what is v for x0 = 0.4 and eps = -1.2?",
             "v = sqrt(0.5) (-1.2) - sqrt(0.5) (0.4) = -1.131."),
        Part("4", "The training loop",
             "Write `train_loop`: Adam, one batch a step drawn from the generator, the learning rate held and then "
             "taken linearly to 0 over the last fifth (what a short run needs instead of weight averaging), "
             "zero_grad before backward, and the list of losses as Python floats.",
             [TRAIN_LOOP], 15, S1_LOOP, "",
             "What happens if opt.zero_grad() is left out?",
             "PyTorch adds each backward() into .grad, so step k moves the parameters by the sum of all k gradients "
             "so far: with Adam's normalisation the update direction soon stops following the current batch."),
        Part("5", "The sampling loops: DDIM and DDPM",
             "Write `ddim_sample` (deterministic, eta = 0, x0 form) and `ddpm_sample` (ancestral: a draw from the "
             "posterior q(x_prev | x_t, x0_hat) at each step), both over trailing timesteps (Lin et al. Table 2) "
             "and both ending with a step to alpha_bar = 1, a clean sample. `denoise(x, t)` gives (x0_hat, eps_hat).",
             [EXERCISES[13], DDPM_SAMPLE], 20, S1_SAMPLERS, "",
             "Why does DDIM with eta = 0 reuse eps_hat instead of drawing fresh noise?",
             "The DDIM step keeps x_prev on the path of the same (x0_hat, eps_hat): it moves along q(x_prev | x0) "
             "with the noise x_t already carries, so the map from x_T to x_0 is deterministic; fresh noise is DDPM's "
             "posterior draw, a different sampler."),
        Part("6", "Train and draw",
             f"Your `train_loop` and `v_loss` train minidiff's `small` UNet (0.27M parameters) on 20,000 Fashion-MNIST "
             f"images for {BUDGET['steps']} steps of batch {BUDGET['batch_size']} (linear schedule, lr "
             f"{BUDGET['lr']:g}); your `ddim_sample` draws {BUDGET['samples']} samples in {BUDGET['sample_steps']} steps. "
             "The grader scores them with the FCD (lower is better) and gives the points by the band in "
             "docs/exercises/problem_sets.md, set from the reference solution on three seeds.",
             [], 30, "", S1_TRAIN, trained=True, measure="fcd", band=dict(full=9.0, zero=14.0)),
    ],
    "4-6 hours", band=dict(full=9.0, zero=14.0, measured="docs/exercises/problem_sets.md"),
)

from .set2 import SET2  # noqa: E402  (set2.py builds on Part and ProblemSet above)

SETS = {1: SET1, 2: SET2}


def problem_set(number: int) -> ProblemSet:
    if number not in SETS:
        raise UsageError(f"no problem set {number}: the sets are {', '.join(map(str, SETS))} (minidiff course sets)")
    return SETS[number]


# ------------------------------------------------------------------------------------------------
# The notebook
# ------------------------------------------------------------------------------------------------


def notebook_name(number: int, solution: bool = False) -> str:
    return f"set{number:02d}_{'solution' if solution else 'starter'}.ipynb"


def make_notebook(number: int, *, solution: bool = False):
    """The set's notebook (nbformat v4) for students, or with the solutions and answers for teachers."""
    try:
        import nbformat
        from nbformat import v4
    except ImportError:
        raise UsageError("writing a notebook needs nbformat: pip install nbformat (or minidiff's dev extra)") from None
    ps = problem_set(number)
    cells = []

    def add(cell, tag):
        cell.id = f"{tag}-{len(cells)}"
        cell.metadata["tags"] = [f"minidiff-{tag}"]
        cells.append(cell)

    points = "\n".join(f"| {p.key} | {p.title} | {p.points:g} |" for p in ps.parts)
    add(v4.new_markdown_cell(f"# Problem set {number}: {ps.title}{' (solution)' if solution else ''}\n\n{ps.intro}\n\n"
                             f"| part | | points |\n|---|---|---|\n{points}\n| | total | {ps.total:g} |"), "page")
    add(v4.new_code_cell("# The imports every part uses (keep this cell).\nimport math\n\nimport torch\n\n"
                         f"from minidiff.course.grading import check_part\n\ntorch.set_num_threads(max(1, torch.get_num_threads()))"),
        "answer")
    for part in ps.parts:
        add(v4.new_markdown_cell(f"## Part {part.key}: {part.title} ({part.points:g} points)\n\n{part.text}"), "page")
        if part.functions:
            code = part.solution if solution else "\n\n\n".join(_starter(ex) for ex in part.functions)
            add(v4.new_code_cell(code), "answer")
            add(v4.new_code_cell(f"check_part({number}, {part.key!r}, globals())"), "check")
        if part.figure:
            add(v4.new_code_cell(part.figure), "student-run")
        if part.question:
            text = f"**Question.** {part.question}\n\n" + (f"**Answer (for teachers).** {part.answer}" if solution
                                                          else "*Your answer:* ")
            add(v4.new_markdown_cell(text), "question")
    nb = v4.new_notebook(cells=cells, metadata={
        "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
        "language_info": {"name": "python"}, "minidiff": {"set": number, "solution": solution}})
    nbformat.validate(nb)
    return nb


def write_set(number: int, folder, *, solution: bool = False):
    """Write the notebook into `folder` (never overwriting) and return its path."""
    import nbformat
    from pathlib import Path

    nb = make_notebook(number, solution=solution)
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"{folder} is a file, not a folder: give --dir a folder for the notebook")
    path = folder / notebook_name(number, solution)
    if path.exists():
        raise UsageError(f"{path} exists; not overwritten (the work in it is kept)")
    folder.mkdir(parents=True, exist_ok=True)
    with open(path, "x", encoding="utf-8") as f:
        nbformat.write(nb, f)
    return path
