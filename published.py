"""The published numbers and checkpoints this project reproduces: the Hugging Face model cards of
ResNet18 on CIFAR-10 (the original, the retrains, SSD, AdvNegGrad), the CIFAR-100 report's SISA and
the ensemble report. No torch: report.py, verify_published.py, reproduce_cards.py and models.py (the
short names below) read it.

    python -c "import published; print(published.published_name('ssd', 3))"
"""
import os
import urllib.parse

CIFAR10 = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
# The published numbers. ResNet18 on CIFAR-10, from the Hugging Face model cards: the full
# model and the retrains (jaeunglee/resnet18-cifar10-unlearning: test top-1, the retrains' on
# their nine classes), SSD and AdvNegGrad per class (forget acc, forget loss, retain acc,
# retain loss on the test set).
PUBLISHED_FULL = 95.4
PUBLISHED_RETRAIN = dict(zip(CIFAR10, (95.3, 95.4, 95.6, 96.6, 95.2, 96.6, 95.2, 95.3, 95.4, 95.3)))
PUBLISHED_UNLEARN = {
    "ssd": dict(zip(CIFAR10, ((0.0, 8.102, 83.38, 0.527), (0.0, 6.550, 94.62, 0.189),
                              (0.0, 9.854, 90.06, 0.328), (0.0, 8.428, 90.00, 0.317),
                              (0.0, 5.885, 95.26, 0.161), (0.0, 6.917, 12.53, 2.799),
                              (0.0, 5.532, 95.29, 0.156), (0.0, 7.328, 17.71, 3.478),
                              (0.0, 3.783, 95.41, 0.158), (0.0, 5.864, 94.29, 0.198)))),
    "advneggrad": dict(zip(CIFAR10, ((0.0, 28.448, 90.52, 0.631), (0.0, 31.394, 91.27, 0.516),
                                     (0.0, 30.110, 92.72, 0.475), (0.0, 26.171, 92.44, 0.512),
                                     (0.0, 27.805, 91.19, 0.561), (0.0, 28.574, 92.81, 0.456),
                                     (0.0, 28.360, 92.18, 0.486), (0.0, 32.505, 92.89, 0.401),
                                     (0.0, 29.307, 91.34, 0.543), (0.0, 28.959, 92.47, 0.474)))),
}
# SISA (CIFAR-100 report, ResNet34 from ImageNet, 4 shards x 5 slices): top-1 and MIA before / after
# forgetting a random 20%; the ensemble report: 5 ImageNet ResNet18 members, mean softmax.
PUBLISHED_SISA = {"before": (78.1, 0.527), "after": (77.1, 0.498)}
PUBLISHED_ENSEMBLE = 97.61
# The published checkpoints, each card's repository and file name ({c}: class name,
# {k}: class index); a name is hf://REPOSITORY/FILE, which every --model takes
# (models.fetch downloads it once).
PUBLISHED_CHECKPOINTS = {
    "full": ("jaeunglee/resnet18-cifar10-unlearning", "resnet18_cifar10_full.pth"),
    "retrain": ("jaeunglee/resnet18-cifar10-unlearning", "resnet18_cifar10_no_{c}.pth"),
    "ssd": ("Yurim0507/Selective_Synapse_Dampening", "cifar10_resnet18_SSD_{k}.pth"),
    "advneggrad": ("Yurim0507/AdvNegGrad", "cifar10_resnet18_AdvNegGrad_{k}.pth"),
}
# The ensemble report's starting weights ("a model pretrained on more data"): timm's ResNet18,
# semi-weakly supervised on Instagram-1B hashtags, fine-tuned on ImageNet-1k. Its keys are
# torchvision's, so the file loads into resnet18-imagenet as it is (models.load_pretrained).
PUBLISHED_PRETRAINED = {
    "ensemble": ("timm/resnet18.fb_swsl_ig1b_ft_in1k", "pytorch_model.bin"),
}
DATASET_IDS = {"cifar10": "uoft-cs/cifar10", "cifar100": "uoft-cs/cifar100",
               "cifar10-jpeg": "uoft-cs/cifar10"}


def published_name(role, k=None):
    """The hf:// name of a published checkpoint:
    the full model (k None), or the one without / unlearning class k."""
    repo, file = PUBLISHED_CHECKPOINTS[role]
    return f"hf://{repo}/{file.format(c=CIFAR10[k] if k is not None else '', k=k)}"


def pretrained_name(role="ensemble"):
    """The hf:// name of published starting weights: pretrained_name() is the ensemble report's."""
    return "hf://{}/{}".format(*PUBLISHED_PRETRAINED[role])


def published_names():
    """{file name: hf:// name} of every published checkpoint."""
    names = [published_name("full")] + [published_name(role, k)
                                        for role in PUBLISHED_CHECKPOINTS if role != "full"
                                        for k in range(len(CIFAR10))]
    return {name.rsplit("/", 1)[1]: name for name in names}


def hub_name(source):
    """A checkpoint's name as a reader can fetch it:
    the hf:// name of a published file, else its file name."""
    if source.startswith("hf://"):
        return source.split("#")[0]
    return published_names().get(os.path.basename(source), os.path.basename(source))


# chenyaofo/pytorch-cifar-models (torch.hub's cifar100_resnet32 and kin): option-B CIFAR ResNets
# (models.py's resnet20b ... resnet56b), the CIFAR-100 report's starting weights for its
# fine-tuning. Release files, plain state_dicts, whose name ends in the start of their sha256
# (torch.hub's convention, checked on every use); their published top-1 where the issue that added
# them gave it; the normalisation they were trained with (that repository's training configuration,
# chenyaofo/image-classification-codebase): the CIFAR-100 values differ from torchvision's folklore
# ones in the fourth decimal.
# the prefix of their short names: --model <prefix>cifar100_resnet32
CIFAR_MODELS = "chenyaofo/pytorch-cifar-models:"
# $CIFAR_MODELS_URL
CIFAR_MODELS_URL = "https://github.com/chenyaofo/pytorch-cifar-models/releases/download/resnet"
CIFAR_MODELS_STATS = {"cifar10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
                      "cifar100": ((0.5070, 0.4865, 0.4409), (0.2673, 0.2564, 0.2761))}
PUBLISHED_CIFAR_MODELS = {  # name: (release file, published test top-1 or None)
    "cifar100_resnet20": ("cifar100_resnet20-23dac2f1.pt", None),
    "cifar100_resnet32": ("cifar100_resnet32-84213ce6.pt", 70.16),
    "cifar100_resnet44": ("cifar100_resnet44-ffe32858.pt", None),
    "cifar100_resnet56": ("cifar100_resnet56-f2eff4c8.pt", 72.63),
    "cifar10_resnet20": ("cifar10_resnet20-4118986f.pt", None),
    "cifar10_resnet32": ("cifar10_resnet32-ef93fc4d.pt", None),
    "cifar10_resnet44": ("cifar10_resnet44-2a3cabcb.pt", None),
    "cifar10_resnet56": ("cifar10_resnet56-187c023a.pt", None),
}


def cifar_model_url(name):
    """The release URL of a short name chenyaofo/pytorch-cifar-models:<model>;
    $CIFAR_MODELS_URL points at a mirror."""
    model = name[len(CIFAR_MODELS):]
    if model not in PUBLISHED_CIFAR_MODELS:
        raise ValueError(f"{name}: unknown; the published ones are "
                         f"{', '.join(CIFAR_MODELS + m for m in PUBLISHED_CIFAR_MODELS)}")
    base = url_from_env("CIFAR_MODELS_URL", CIFAR_MODELS_URL).rstrip("/")
    return f"{base}/{PUBLISHED_CIFAR_MODELS[model][0]}"


def url_from_env(variable, default):
    """$variable, a mirror's URL, or `default` when it is unset. Set to nothing or to no URL, it is
    one line naming it (it was "unknown url type: '/o/r/...'", the variable unnamed)."""
    value = os.environ.get(variable)
    if value is None:
        return default
    parts = urllib.parse.urlsplit(value)
    web = parts.scheme in ("https", "http") and parts.netloc
    if not (web or (parts.scheme == "file" and parts.path.strip("/"))):
        raise ValueError(f"${variable} is set to {value!r}, not an https://, http:// or file:// "
                         f"URL; unset it (the default is {default}) or give a mirror's URL")
    return value


def cifar_model_stats(name):
    """(mean, std) a published CIFAR model was trained with, by its short name."""
    return CIFAR_MODELS_STATS[name[len(CIFAR_MODELS):].split("_")[0]]
