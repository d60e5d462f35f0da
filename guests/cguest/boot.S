/* PVH boot of the C guest: Xen enters _start32 (XEN_ELFNOTE_PHYS32_ENTRY) in
 * 32-bit protected mode with paging off and ebx = the hvm_start_info's
 * physical address. This code loads its own GDT and identity page tables
 * (the first 1 GiB in 2 MiB pages), switches to long mode and calls
 * cg_main(start_info) on its own stack. */

    /* The only Xen ELF note a PVH image needs. */
    .section .note.Xen, "a", @note
    .p2align 2
    .long 4                 /* name size: "Xen\0" */
    .long 4                 /* descriptor size */
    .long 18                /* XEN_ELFNOTE_PHYS32_ENTRY */
    .asciz "Xen"
    .p2align 2
    .long _start32
    .p2align 2

    .section .text.boot, "ax"
    .code32
    .global _start32
    .type _start32, @function
_start32:
    cli
    mov %ebx, %esi          /* hvm_start_info, for cg_main */
    lgdt gdt_ptr
    mov %cr4, %eax
    or $0x20, %eax          /* CR4.PAE */
    mov %eax, %cr4
    mov $pml4, %eax
    mov %eax, %cr3
    mov $0xc0000080, %ecx   /* EFER */
    rdmsr
    or $0x100, %eax         /* EFER.LME */
    wrmsr
    mov %cr0, %eax
    or $0x80000001, %eax    /* CR0.PG | CR0.PE */
    mov %eax, %cr0
    ljmp $0x08, $start64

    .code64
start64:
    mov $0x10, %eax
    mov %eax, %ds
    mov %eax, %es
    mov %eax, %ss
    mov %eax, %fs
    mov %eax, %gs
    mov $stack_top, %rsp
    xor %ebp, %ebp          /* the outermost frame: backtraces end here */
    mov %esi, %edi
    call cg_main
1:  hlt
    jmp 1b
    .size _start32, . - _start32

    .section .data.boot_pt, "aw"
    .balign 4096
pml4:
    .quad pdpt + 0x3        /* present, writable */
    .fill 511, 8, 0
pdpt:
    .quad pd + 0x3
    .fill 511, 8, 0
pd:
    .set .Lpage, 0
    .rept 512
    .quad (.Lpage << 21) + 0x83   /* present, writable, 2 MiB */
    .set .Lpage, .Lpage + 1
    .endr

    .balign 16
gdt:
    .quad 0
    .quad 0x00af9a000000ffff    /* 0x08: 64-bit code */
    .quad 0x00cf92000000ffff    /* 0x10: data */
gdt_end:
gdt_ptr:
    .word gdt_end - gdt - 1
    .quad gdt

    /* Filled by Xen once cg_main writes its address to Xen's MSR. */
    .section .bss.hypercall_page, "aw", @nobits
    .balign 4096
    .global hypercall_page
hypercall_page:
    .skip 4096

    .section .bss.stack, "aw", @nobits
    .balign 16
    .skip 65536
stack_top:

    .section .note.GNU-stack, "", @progbits
