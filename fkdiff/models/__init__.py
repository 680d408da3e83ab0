"""Networks (backbones) and the functions that turn them into denoisers and energies."""
from fkdiff.models.mlp import MLP
from fkdiff.models.backbones import get_backbone, make_denoiser
from fkdiff.models import energy
from fkdiff.models.energy import EnergyModel, bind, init_from_teacher
