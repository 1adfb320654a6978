  r0 = * (u8 *)skb[0]    // BPF_LD | BPF_ABS | BPF_B
  r0 = *  (u16 *)skb[r1] // BPF_LD | BPF_IND | BPF_H
  r9 = 0xffffffff ll     // BPF_LD | BPF_DW | BPF_IMM
  r9 = dummy_map  ll     // BPF_LD | BPF_DW | BPF_IMM
  r8 = *(u64 *)(r3 - 30) // BPF_LDX | BPF_DW
  lock *(u32 *)(r2 + 16) += r9  // BPF_STX | BPF_W | BPF_XADD
  goto Llabel0               // BPF_JA
  if r9 s<= r10 goto Llabel0 // BPF_JSLE | BPF_X
  if r2 >= 0xffffffff goto Llabel0  // BPF_JGE  | BPF_K
Llabel0 :
  r10 s>>= r0 // BPF_ARSH | BPF_X
  r1 = be16 r1  // BPF_END  | BPF_TO_BE
  w1 = (s8)w2
  r0 = atomic_fetch_add((u64 *)(r1 + 0), r0)
  r0 = cmpxchg_64(r1 + 0, r0, r2)
  w3 = xchg32_32(r1 - 8, w3)
  r1 s%= 5
  call 1
  exit
