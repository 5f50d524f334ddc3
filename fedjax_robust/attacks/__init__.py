"""Byzantine attacks: model poisoning (replace Byzantine rows of `updates [n, d]`) and data
poisoning (transform a Byzantine client's labels before local training)."""

from fedjax_robust.attacks.base import Attack
from fedjax_robust.attacks.base import honest_mean_and_std
from fedjax_robust.attacks.base import replace_byzantine
from fedjax_robust.attacks.data_poisoning import flip_labels
from fedjax_robust.attacks.model_poisoning import alie
from fedjax_robust.attacks.model_poisoning import alie_z
from fedjax_robust.attacks.model_poisoning import foe
from fedjax_robust.attacks.model_poisoning import inf
from fedjax_robust.attacks.model_poisoning import ipm
from fedjax_robust.attacks.model_poisoning import large
from fedjax_robust.attacks.model_poisoning import nan
from fedjax_robust.attacks.model_poisoning import sign_flip
from fedjax_robust.attacks.registry import get
from fedjax_robust.attacks.registry import model_poisoning_names
from fedjax_robust.attacks.registry import names
