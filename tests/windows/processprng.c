/* bcryptprimitives.dll for Wine 8, which lacks it: Rust's std (since 1.78)
 * takes its random bytes from ProcessPrng and will not start without it.
 * This stand-in forwards to advapi32's RtlGenRandom (SystemFunction036),
 * which Wine has. Built and copied into the test prefix's system32 by
 * tests/windows.rs; real Windows (10 and later) has the DLL. */
#include <windows.h>

BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length);

__declspec(dllexport) BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T length) {
    while (length > 0) {
        ULONG part = length > 0x40000000 ? 0x40000000 : (ULONG)length;
        if (!SystemFunction036(data, part)) return FALSE;
        data += part;
        length -= part;
    }
    return TRUE;
}
