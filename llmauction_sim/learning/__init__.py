"""Learning layer: the pCTR reward model, the reward R(y), IRPO preference pairs and a DPO phase.

Import the submodules directly (`learning.pctr`, `learning.reward`, `learning.pairs`,
`learning.dpo`); `dpo` pulls in TRL and PEFT, so nothing heavy is imported here.
"""
