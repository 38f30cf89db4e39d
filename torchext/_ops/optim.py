"""Fused optimizer steps: fake kernels so torch.compile can trace torch.ops.torchext.*_step_."""
import torch


@torch.library.register_fake("torchext::sgd_step_")
def _sgd_step_fake(params, grads, momentum_buffers, momentum_counts, master_params, lr, momentum, dampening,
                   weight_decay, nesterov, maximize, lr_tensor, grad_scale, found_inf):
    torch._check(len(grads) == len(params), lambda: "torchext.sgd_step_: one grad per param expected")
    return None


@torch.library.register_fake("torchext::adam_step_")
def _adam_step_fake(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps, master_params, lr, beta1,
                    beta2, eps, weight_decay, amsgrad, maximize, decoupled_weight_decay, lr_tensor, grad_scale,
                    found_inf):
    torch._check(len(grads) == len(params), lambda: "torchext.adam_step_: one grad per param expected")
    return None
